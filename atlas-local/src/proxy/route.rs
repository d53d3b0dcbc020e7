//! Which service a request goes to on a router serving several: the
//! [`ServiceRoute`] a service claims (host names, an optional path
//! prefix) and the table the request path looks requests up in.
//!
//! The table is generic over what a route leads to, so this module needs
//! no other proxy module.

use std::collections::HashMap;

use atlas_core::{Error, Result, ServiceName};
use serde::{Deserialize, Serialize};

/// The longest host name looked up (a DNS name is at most 253 octets); a
/// longer `Host` matches no route.
const MAX_HOST: usize = 253;

/// The requests a service added to a proxy router receives: those whose
/// host (the `Host` header, or the authority of an absolute-form target)
/// is one of `hosts`, and whose target starts with `path_prefix` when it
/// is set.
///
/// - Host names match case-insensitively, and a port in the `Host` header
///   is ignored. A name may start with a `*.` wildcard label:
///   `*.example.com` matches `a.example.com` and `a.b.example.com`, not
///   `example.com`. An exact name beats a wildcard, and a longer wildcard
///   a shorter one.
/// - A path prefix starts with `/` and matches whole segments: `/api`
///   matches `/api`, `/api/orders` and `/api?x=1`, not `/apis`. Among the
///   routes of the host matched, the longest matching prefix wins (no
///   prefix matches every path). The path is relayed unchanged.
///
/// ```
/// use atlas_local::proxy::ServiceRoute;
///
/// let route = ServiceRoute::host("shop.example.com").with_path_prefix("/api");
/// assert_eq!(route.hosts, ["shop.example.com"]);
/// assert_eq!(route.path_prefix.as_deref(), Some("/api"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceRoute {
    /// The host names routed to the service (at least one).
    pub hosts: Vec<String>,
    /// Only targets under this path prefix; `None` for every path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
}

impl ServiceRoute {
    /// Every request for host `host`.
    pub fn host(host: impl Into<String>) -> Self {
        ServiceRoute {
            hosts: vec![host.into()],
            path_prefix: None,
        }
    }

    /// Adds host `host` to the route.
    pub fn with_host(mut self, host: impl Into<String>) -> Self {
        self.hosts.push(host.into());
        self
    }

    /// Only requests whose target is under `prefix`.
    pub fn with_path_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.path_prefix = Some(prefix.into());
        self
    }

    /// Checks the route and returns its host names in lowercase.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] naming the field (`route.hosts[i]`,
    /// `route.path_prefix`) for no host, a host that is not a DNS name
    /// (optionally with a leading `*.` label), a host listed twice, or a
    /// prefix not starting with `/` or holding a space, `?` or `#`.
    pub(crate) fn validate(&self) -> Result<Vec<String>> {
        if self.hosts.is_empty() {
            return Err(Error::invalid("route.hosts", "must name at least one host"));
        }
        let mut hosts: Vec<String> = Vec::with_capacity(self.hosts.len());
        for (i, host) in self.hosts.iter().enumerate() {
            let field = || format!("route.hosts[{i}]");
            if let Some(rule) = host_rule(host) {
                return Err(Error::invalid(field(), format!("{host:?} {rule}")));
            }
            let lower = host.to_ascii_lowercase();
            if hosts.contains(&lower) {
                return Err(Error::invalid(field(), format!("{host:?} is listed twice")));
            }
            hosts.push(lower);
        }
        if let Some(prefix) = &self.path_prefix {
            if !prefix.starts_with('/') {
                return Err(Error::invalid(
                    "route.path_prefix",
                    format!("{prefix:?} must start with '/'"),
                ));
            }
            if prefix
                .bytes()
                .any(|b| b == b'?' || b == b'#' || !b.is_ascii_graphic())
            {
                return Err(Error::invalid(
                    "route.path_prefix",
                    format!("{prefix:?} must be visible ASCII without '?' or '#'"),
                ));
            }
        }
        Ok(hosts)
    }

    /// The prefix as matched: without a trailing `/` (so `/api/` and
    /// `/api` claim the same paths), empty for none or `/`.
    fn key(&self) -> &str {
        self.path_prefix
            .as_deref()
            .map_or("", |p| p.trim_end_matches('/'))
    }
}

/// The rule `host` breaks, or `None` for a DNS name of letters, digits,
/// `-` and `.` (labels of 1–63 characters, 253 in all), optionally with a
/// leading `*.` label.
fn host_rule(host: &str) -> Option<&'static str> {
    let name = host.strip_prefix("*.").unwrap_or(host);
    if name.is_empty() {
        return Some("must not be empty");
    }
    if host.len() > MAX_HOST {
        return Some("is longer than 253 characters");
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Some("must be dot-separated labels of 1 to 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Some("may hold only letters, digits, '-' and '.' (and a leading '*.')");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Some("has a label starting or ending with '-'");
        }
    }
    None
}

/// The routes of one host name, longest prefix first.
#[derive(Debug, Clone)]
struct HostRoutes<T> {
    routes: Vec<(String, ServiceName, T)>,
}

impl<T> HostRoutes<T> {
    fn find(&self, target: &[u8]) -> Option<&T> {
        self.routes
            .iter()
            .find(|(prefix, _, _)| prefix_matches(prefix.as_bytes(), target))
            .map(|(_, _, to)| to)
    }
}

/// Whether `prefix` (no trailing `/`; empty for all) matches `target` on
/// a segment boundary.
fn prefix_matches(prefix: &[u8], target: &[u8]) -> bool {
    target.starts_with(prefix)
        && matches!(target.get(prefix.len()), None | Some(b'/' | b'?' | b'#'))
}

/// The services a router routes to by host and path, each leading to a
/// `T`. Immutable: a change builds a new table, swapped in whole.
#[derive(Debug, Clone)]
pub(crate) struct RouteTable<T> {
    /// Every service with its route, in the order added.
    services: Vec<(ServiceName, ServiceRoute, T)>,
    exact: HashMap<String, HostRoutes<T>>,
    /// Wildcard hosts by their suffix (`.example.com`), longest first.
    wildcards: Vec<(String, HostRoutes<T>)>,
}

impl<T> Default for RouteTable<T> {
    fn default() -> Self {
        RouteTable {
            services: Vec::new(),
            exact: HashMap::new(),
            wildcards: Vec::new(),
        }
    }
}

impl<T: Clone> RouteTable<T> {
    /// Whether the table routes nothing.
    pub(crate) fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// The services and their routes, in the order added.
    pub(crate) fn services(&self) -> impl Iterator<Item = (&ServiceName, &ServiceRoute, &T)> {
        self.services.iter().map(|(s, r, t)| (s, r, t))
    }

    /// What `service` leads to.
    pub(crate) fn get(&self, service: &ServiceName) -> Option<&T> {
        self.services
            .iter()
            .find(|(s, _, _)| s == service)
            .map(|(_, _, t)| t)
    }

    /// This table with `service` added on `route`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for an invalid route (see
    /// [`ServiceRoute::validate`]); [`Error::Conflict`] when `service` is
    /// in the table already, or another service claims one of the route's
    /// hosts with the same path prefix (naming host and service).
    pub(crate) fn with(&self, service: &ServiceName, route: &ServiceRoute, to: T) -> Result<Self> {
        let hosts = route.validate()?;
        if self.get(service).is_some() {
            return Err(Error::conflict(format!(
                "service {service} is already routed by this proxy"
            )));
        }
        let key = route.key();
        for host in &hosts {
            let claimed = self.services.iter().find(|(_, r, _)| {
                r.key() == key && r.hosts.iter().any(|h| h.eq_ignore_ascii_case(host))
            });
            if let Some((owner, _, _)) = claimed {
                let prefix = route.path_prefix.as_deref().unwrap_or("/");
                return Err(Error::conflict(format!(
                    "host {host} with path prefix {prefix} is already routed to service {owner}"
                )));
            }
        }
        let mut services = self.services.clone();
        services.push((service.clone(), route.clone(), to));
        Ok(Self::index(services))
    }

    /// This table without `service`, and what it led to; `None` when the
    /// table does not route it.
    pub(crate) fn without(&self, service: &ServiceName) -> Option<(Self, T)> {
        let at = self.services.iter().position(|(s, _, _)| s == service)?;
        let mut services = self.services.clone();
        let (_, _, to) = services.remove(at);
        Some((Self::index(services), to))
    }

    fn index(services: Vec<(ServiceName, ServiceRoute, T)>) -> Self {
        let mut exact: HashMap<String, HostRoutes<T>> = HashMap::new();
        let mut wildcards: Vec<(String, HostRoutes<T>)> = Vec::new();
        for (service, route, to) in &services {
            let key = route.key().to_owned();
            for host in &route.hosts {
                let host = host.to_ascii_lowercase();
                let entry = (key.clone(), service.clone(), to.clone());
                match host.strip_prefix('*') {
                    Some(suffix) => match wildcards.iter_mut().find(|(s, _)| s == suffix) {
                        Some((_, routes)) => routes.routes.push(entry),
                        None => wildcards.push((
                            suffix.to_owned(),
                            HostRoutes {
                                routes: vec![entry],
                            },
                        )),
                    },
                    None => exact
                        .entry(host)
                        .or_insert_with(|| HostRoutes { routes: Vec::new() })
                        .routes
                        .push(entry),
                }
            }
        }
        let by_prefix = |routes: &mut HostRoutes<T>| {
            routes.routes.sort_by_key(|r| std::cmp::Reverse(r.0.len()));
        };
        exact.values_mut().for_each(by_prefix);
        wildcards.iter_mut().for_each(|(_, r)| by_prefix(r));
        wildcards.sort_by_key(|w| std::cmp::Reverse(w.0.len()));
        RouteTable {
            services,
            exact,
            wildcards,
        }
    }

    /// Where a request for `host` (a `Host` value, port allowed) and
    /// `target` (origin-form) goes: the exact host's longest matching
    /// prefix, else the longest wildcard's; `None` when no route matches.
    pub(crate) fn find(&self, host: &[u8], target: &[u8]) -> Option<&T> {
        let mut buf = [0u8; MAX_HOST];
        let name = host_name(host, &mut buf)?;
        if let Some(to) = self.exact.get(name).and_then(|r| r.find(target)) {
            return Some(to);
        }
        self.wildcards
            .iter()
            .filter(|(suffix, _)| name.len() > suffix.len() && name.ends_with(suffix.as_str()))
            .find_map(|(_, routes)| routes.find(target))
    }
}

/// `host` without its port (an IPv6 literal keeps its brackets) and a
/// trailing dot, in lowercase, in `buf`; `None` when it does not fit or
/// is not UTF-8.
fn host_name<'a>(host: &[u8], buf: &'a mut [u8; MAX_HOST]) -> Option<&'a str> {
    let host = host.trim_ascii();
    let end = if host.first() == Some(&b'[') {
        host.iter()
            .position(|&b| b == b']')
            .map_or(host.len(), |i| i + 1)
    } else {
        host.iter().rposition(|&b| b == b':').unwrap_or(host.len())
    };
    let mut name = &host[..end];
    if let Some(stripped) = name.strip_suffix(b".") {
        name = stripped;
    }
    let out = buf.get_mut(..name.len())?;
    out.copy_from_slice(name);
    out.make_ascii_lowercase();
    std::str::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str) -> ServiceName {
        ServiceName::new(name).unwrap()
    }

    fn table(routes: &[(&str, ServiceRoute)]) -> RouteTable<&'static str> {
        let mut table = RouteTable::default();
        for (name, route) in routes {
            let leaked: &'static str = Box::leak(name.to_string().into_boxed_str());
            table = table.with(&svc(name), route, leaked).unwrap();
        }
        table
    }

    #[test]
    fn routes_are_validated() {
        let bad = [
            (
                ServiceRoute {
                    hosts: vec![],
                    path_prefix: None,
                },
                "route.hosts",
            ),
            (ServiceRoute::host(""), "route.hosts[0]"),
            (ServiceRoute::host("a b"), "route.hosts[0]"),
            (ServiceRoute::host("a..b"), "route.hosts[0]"),
            (ServiceRoute::host("-a.b"), "route.hosts[0]"),
            (ServiceRoute::host("a.*.b"), "route.hosts[0]"),
            (ServiceRoute::host("*."), "route.hosts[0]"),
            (ServiceRoute::host("a.b").with_host("A.B"), "route.hosts[1]"),
            (
                ServiceRoute::host("a").with_path_prefix("api"),
                "route.path_prefix",
            ),
            (
                ServiceRoute::host("a").with_path_prefix("/a?b"),
                "route.path_prefix",
            ),
        ];
        for (route, field) in bad {
            let err = route.validate().unwrap_err();
            assert_eq!(err.kind(), atlas_core::ErrorKind::InvalidInput, "{route:?}");
            assert!(err.to_string().contains(field), "{route:?}: {err}");
        }
        assert!(ServiceRoute::host("*.Example.com").validate().is_ok());
        assert!(
            ServiceRoute::host("localhost")
                .with_path_prefix("/")
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn exact_beats_wildcard_and_longest_prefix_wins() {
        let t = table(&[
            ("shop", ServiceRoute::host("shop.example.com")),
            (
                "api",
                ServiceRoute::host("shop.example.com").with_path_prefix("/api"),
            ),
            (
                "v2",
                ServiceRoute::host("shop.example.com").with_path_prefix("/api/v2/"),
            ),
            ("any", ServiceRoute::host("*.example.com")),
            ("deep", ServiceRoute::host("*.eu.example.com")),
        ]);
        let find = |h: &str, p: &str| t.find(h.as_bytes(), p.as_bytes()).copied();
        assert_eq!(find("shop.example.com", "/"), Some("shop"));
        assert_eq!(find("SHOP.example.com:8080", "/api"), Some("api"));
        assert_eq!(find("shop.example.com", "/api?x=1"), Some("api"));
        assert_eq!(find("shop.example.com", "/apis"), Some("shop"));
        assert_eq!(find("shop.example.com", "/api/v2/x"), Some("v2"));
        assert_eq!(find("shop.example.com.", "/api/v2"), Some("v2"));
        assert_eq!(find("blog.example.com", "/api"), Some("any"));
        assert_eq!(find("a.b.example.com", "/"), Some("any"));
        assert_eq!(find("x.eu.example.com", "/"), Some("deep"));
        assert_eq!(find("example.com", "/"), None);
        assert_eq!(find("other.org", "/"), None);
        assert_eq!(find("[::1]:80", "/"), None);
    }

    #[test]
    fn a_host_without_a_matching_prefix_falls_to_wildcards() {
        let t = table(&[
            (
                "api",
                ServiceRoute::host("a.example.com").with_path_prefix("/api"),
            ),
            ("any", ServiceRoute::host("*.example.com")),
        ]);
        assert_eq!(t.find(b"a.example.com", b"/api/x").copied(), Some("api"));
        assert_eq!(t.find(b"a.example.com", b"/web").copied(), Some("any"));
    }

    #[test]
    fn claims_conflict_and_removal_frees_them() {
        let t = table(&[("shop", ServiceRoute::host("shop.example.com"))]);
        let err = t
            .with(
                &svc("other"),
                &ServiceRoute::host("Shop.Example.com"),
                "other",
            )
            .unwrap_err();
        assert_eq!(err.kind(), atlas_core::ErrorKind::Conflict);
        assert!(err.to_string().contains("shop.example.com"), "{err}");
        assert!(err.to_string().contains("service shop"), "{err}");
        let err = t
            .with(&svc("shop"), &ServiceRoute::host("other.example.com"), "x")
            .unwrap_err();
        assert_eq!(err.kind(), atlas_core::ErrorKind::Conflict);
        // `/` and no prefix claim the same paths.
        let err = t
            .with(
                &svc("other"),
                &ServiceRoute::host("shop.example.com").with_path_prefix("/"),
                "other",
            )
            .unwrap_err();
        assert_eq!(err.kind(), atlas_core::ErrorKind::Conflict);
        assert!(
            t.with(
                &svc("other"),
                &ServiceRoute::host("shop.example.com").with_path_prefix("/api"),
                "other"
            )
            .is_ok()
        );
        let (empty, removed) = t.without(&svc("shop")).unwrap();
        assert_eq!(removed, "shop");
        assert!(empty.is_empty());
        assert!(empty.find(b"shop.example.com", b"/").is_none());
        assert!(t.without(&svc("nope")).is_none());
    }
}
