//! A pod security checker: the Kubernetes Pod Security Standards
//! ("baseline" and "restricted") plus Atlas's own production baseline,
//! applied to a `PodSpec`, a `PodTemplateSpec` or a `Deployment` before
//! anything reaches a cluster.
//!
//! [`check_pod_spec`] returns every [`Violation`], each naming the field path
//! (`spec.containers[1].securityContext.privileged`) and the [`Rule`] it
//! breaks. A [`Level`] chooses the rule set; every level includes the
//! ones below it.
//!
//! Each offending field is reported once, under the lowest level whose rule
//! forbids it: adding `SYS_ADMIN` breaks [`Rule::Capabilities`] (baseline),
//! so the restricted rule [`Rule::RestrictedCapabilities`] only reports what
//! baseline allows and restricted does not (a missing `drop: [ALL]`, adding
//! a default capability other than `NET_BIND_SERVICE`). The seccomp, volume
//! and AppArmor rules split the same way.
//!
//! Pod-level settings are inherited by every container that does not set
//! its own (`runAsNonRoot`, `runAsUser`, `seccompProfile`,
//! `appArmorProfile`, `seLinuxOptions`); a container's own value wins. As
//! the Pod Security admission controller does, an explicitly unsafe
//! pod-level value is a violation even when every container overrides it.
//!
//! Pods with `spec.os.name: windows` are exempt, as the Pod Security
//! Standards say, from [`Rule::PrivilegeEscalation`],
//! [`Rule::SeccompRequired`] and [`Rule::RestrictedCapabilities`], and from
//! [`Rule::ReadOnlyRootFilesystem`], which Windows containers do not support.
//!
//! ```
//! use atlas_k8s::security::{Level, Rule, check_pod_spec};
//! use k8s_openapi::api::core::v1::{Container, PodSpec, SecurityContext};
//!
//! let spec = PodSpec {
//!     containers: vec![Container {
//!         name: "app".into(),
//!         security_context: Some(SecurityContext {
//!             privileged: Some(true),
//!             ..SecurityContext::default()
//!         }),
//!         ..Container::default()
//!     }],
//!     ..PodSpec::default()
//! };
//! let violations = check_pod_spec(&spec, Level::Baseline);
//! assert_eq!(violations.len(), 1);
//! assert_eq!(violations[0].rule, Rule::Privileged);
//! assert_eq!(violations[0].path, "spec.containers[0].securityContext.privileged");
//! ```
//!
//! [`PodSecurityHook`] runs the check as a [`RolloutHook`], so a rollout of a
//! non-compliant template stops before a replica starts.

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;
use atlas_core::hooks::{HookContext, RolloutHook};
use atlas_core::{Error, Result, ServiceName};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    AppArmorProfile, Capabilities, PodSecurityContext, PodSpec, PodTemplateSpec,
    ResourceRequirements, SELinuxOptions, SeccompProfile, SecurityContext, Volume,
};

/// Which rule set to check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Pod Security Standards "baseline": prevents known privilege
    /// escalations.
    Baseline,
    /// Pod Security Standards "restricted": baseline plus hardening best
    /// practice.
    Restricted,
    /// Restricted plus Atlas's production baseline: a read-only root
    /// filesystem and CPU and memory limits on every container.
    Atlas,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
            Level::Atlas => "atlas",
        })
    }
}

/// One rule of the checker; [`Rule::level`] tells which [`Level`] it
/// belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Rule {
    /// Baseline: Windows `hostProcess` containers are forbidden.
    HostProcess,
    /// Baseline: `hostNetwork`, `hostPID` and `hostIPC` must be unset or
    /// false.
    HostNamespaces,
    /// Baseline: containers must not be `privileged`.
    Privileged,
    /// Baseline: added capabilities must be in the container runtime's
    /// default set (`AUDIT_WRITE`, `CHOWN`, `DAC_OVERRIDE`, `FOWNER`,
    /// `FSETID`, `KILL`, `MKNOD`, `NET_BIND_SERVICE`, `SETFCAP`, `SETGID`,
    /// `SETPCAP`, `SETUID`, `SYS_CHROOT`).
    Capabilities,
    /// Baseline: `hostPath` volumes are forbidden.
    HostPathVolumes,
    /// Baseline: container ports must not set a `hostPort`.
    HostPorts,
    /// Baseline: the AppArmor profile (field or annotation) must not be
    /// `Unconfined`.
    AppArmor,
    /// Baseline: the SELinux type must be empty or one of `container_t`,
    /// `container_init_t`, `container_kvm_t`, `container_engine_t`; the
    /// SELinux user and role must be empty.
    SeLinux,
    /// Baseline: `procMount` must be unset or `Default`.
    ProcMount,
    /// Baseline: a seccomp profile, where set, must be `RuntimeDefault` or
    /// `Localhost` (never `Unconfined`).
    Seccomp,
    /// Baseline: only the safe sysctls may be set.
    Sysctls,
    /// Restricted: volumes must be `configMap`, `csi`, `downwardAPI`,
    /// `emptyDir`, `ephemeral`, `persistentVolumeClaim`, `projected` or
    /// `secret`.
    VolumeTypes,
    /// Restricted: `allowPrivilegeEscalation` must be set to false.
    PrivilegeEscalation,
    /// Restricted: `runAsNonRoot` must be true (on the pod, or on every
    /// container), and never false.
    RunAsNonRoot,
    /// Restricted: `runAsUser` must not be 0.
    RunAsUser,
    /// Restricted: a seccomp profile must be set, on the pod or on every
    /// container.
    SeccompRequired,
    /// Restricted: capabilities must drop `ALL` and add at most
    /// `NET_BIND_SERVICE`.
    RestrictedCapabilities,
    /// Atlas: `readOnlyRootFilesystem` must be true.
    ReadOnlyRootFilesystem,
    /// Atlas: every container and init container must set CPU and memory
    /// limits.
    ResourceLimits,
}

impl Rule {
    /// Every rule, in level order.
    pub const ALL: [Rule; 19] = [
        Rule::HostProcess,
        Rule::HostNamespaces,
        Rule::Privileged,
        Rule::Capabilities,
        Rule::HostPathVolumes,
        Rule::HostPorts,
        Rule::AppArmor,
        Rule::SeLinux,
        Rule::ProcMount,
        Rule::Seccomp,
        Rule::Sysctls,
        Rule::VolumeTypes,
        Rule::PrivilegeEscalation,
        Rule::RunAsNonRoot,
        Rule::RunAsUser,
        Rule::SeccompRequired,
        Rule::RestrictedCapabilities,
        Rule::ReadOnlyRootFilesystem,
        Rule::ResourceLimits,
    ];

    /// The lowest level this rule belongs to.
    pub fn level(self) -> Level {
        match self {
            Rule::HostProcess
            | Rule::HostNamespaces
            | Rule::Privileged
            | Rule::Capabilities
            | Rule::HostPathVolumes
            | Rule::HostPorts
            | Rule::AppArmor
            | Rule::SeLinux
            | Rule::ProcMount
            | Rule::Seccomp
            | Rule::Sysctls => Level::Baseline,
            Rule::VolumeTypes
            | Rule::PrivilegeEscalation
            | Rule::RunAsNonRoot
            | Rule::RunAsUser
            | Rule::SeccompRequired
            | Rule::RestrictedCapabilities => Level::Restricted,
            Rule::ReadOnlyRootFilesystem | Rule::ResourceLimits => Level::Atlas,
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Rule::HostProcess => "host process",
            Rule::HostNamespaces => "host namespaces",
            Rule::Privileged => "privileged containers",
            Rule::Capabilities => "capabilities",
            Rule::HostPathVolumes => "hostPath volumes",
            Rule::HostPorts => "host ports",
            Rule::AppArmor => "AppArmor",
            Rule::SeLinux => "SELinux",
            Rule::ProcMount => "/proc mount type",
            Rule::Seccomp => "seccomp",
            Rule::Sysctls => "sysctls",
            Rule::VolumeTypes => "volume types",
            Rule::PrivilegeEscalation => "privilege escalation",
            Rule::RunAsNonRoot => "running as non-root",
            Rule::RunAsUser => "running as non-root user",
            Rule::SeccompRequired => "seccomp profile required",
            Rule::RestrictedCapabilities => "restricted capabilities",
            Rule::ReadOnlyRootFilesystem => "read-only root filesystem",
            Rule::ResourceLimits => "resource limits",
        })
    }
}

/// One broken rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The rule.
    pub rule: Rule,
    /// The field path, e.g. `spec.containers[1].securityContext.privileged`.
    pub path: String,
    /// What is wrong, e.g. `is true`.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} ({} rule {})",
            self.path,
            self.detail,
            self.rule.level(),
            self.rule
        )
    }
}

/// The capabilities container runtimes grant by default; baseline allows
/// adding only these.
pub const BASELINE_CAPABILITIES: [&str; 13] = [
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// The sysctls baseline allows (namespaced and isolated from the node).
pub const SAFE_SYSCTLS: [&str; 10] = [
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];

const SELINUX_TYPES: [&str; 4] = [
    "container_t",
    "container_init_t",
    "container_kvm_t",
    "container_engine_t",
];

const APPARMOR_ANNOTATION: &str = "container.apparmor.security.beta.kubernetes.io/";

/// One container of any kind, as the checker sees it.
struct Entry<'a> {
    path: String,
    name: &'a str,
    security: Option<&'a SecurityContext>,
    ports: Vec<Option<i32>>,
    resources: Option<&'a ResourceRequirements>,
    /// Ephemeral containers may not set resources; the limits rule skips
    /// them.
    ephemeral: bool,
}

struct Checker {
    level: Level,
    /// `spec.os.name` is `windows`: the Linux-only rules do not apply.
    windows: bool,
    out: Vec<Violation>,
}

/// Rules that only make sense for Linux containers. The Pod Security
/// Standards exempt pods with `spec.os.name: windows` from the first three;
/// Windows containers cannot have a read-only root filesystem either.
const LINUX_ONLY: [Rule; 4] = [
    Rule::PrivilegeEscalation,
    Rule::SeccompRequired,
    Rule::RestrictedCapabilities,
    Rule::ReadOnlyRootFilesystem,
];

impl Checker {
    fn report(&mut self, rule: Rule, path: impl Into<String>, detail: impl Into<String>) {
        if rule.level() <= self.level && !(self.windows && LINUX_ONLY.contains(&rule)) {
            self.out.push(Violation {
                rule,
                path: path.into(),
                detail: detail.into(),
            });
        }
    }
}

/// Checks a pod spec at `level`; paths start with `spec.`.
pub fn check_pod_spec(spec: &PodSpec, level: Level) -> Vec<Violation> {
    check(spec, None, "spec", level)
}

/// Checks a pod template at `level`, its AppArmor annotations included;
/// paths start with `spec.` (relative to the template).
pub fn check_pod_template(template: &PodTemplateSpec, level: Level) -> Vec<Violation> {
    check_template_at(template, "", level)
}

/// Checks a Deployment's pod template at `level`; paths start with
/// `spec.template.`.
pub fn check_deployment(deployment: &Deployment, level: Level) -> Vec<Violation> {
    match deployment.spec.as_ref() {
        Some(spec) => check_template_at(&spec.template, "spec.template.", level),
        None => Vec::new(),
    }
}

fn check_template_at(template: &PodTemplateSpec, prefix: &str, level: Level) -> Vec<Violation> {
    let annotations = template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.as_ref());
    match template.spec.as_ref() {
        Some(spec) => check(spec, annotations, &format!("{prefix}spec"), level),
        None => Vec::new(),
    }
}

fn check(
    spec: &PodSpec,
    annotations: Option<&BTreeMap<String, String>>,
    root: &str,
    level: Level,
) -> Vec<Violation> {
    let _span = tracing::debug_span!("pod_security_check", %level).entered();
    let mut c = Checker {
        level,
        windows: spec.os.as_ref().is_some_and(|os| os.name == "windows"),
        out: Vec::new(),
    };
    pod_level(&mut c, spec, annotations, root);
    let entries = entries(spec, root);
    let pod_sc = spec.security_context.as_ref();
    for e in &entries {
        container(&mut c, e, pod_sc);
    }
    tracing::debug!(violations = c.out.len(), "pod security check done");
    c.out
}

fn entries<'a>(spec: &'a PodSpec, root: &str) -> Vec<Entry<'a>> {
    let ports = |p: Option<&Vec<k8s_openapi::api::core::v1::ContainerPort>>| {
        p.map(|ps| ps.iter().map(|p| p.host_port).collect())
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    for (i, c) in spec.containers.iter().enumerate() {
        out.push(Entry {
            path: format!("{root}.containers[{i}]"),
            name: &c.name,
            security: c.security_context.as_ref(),
            ports: ports(c.ports.as_ref()),
            resources: c.resources.as_ref(),
            ephemeral: false,
        });
    }
    for (i, c) in spec.init_containers.iter().flatten().enumerate() {
        out.push(Entry {
            path: format!("{root}.initContainers[{i}]"),
            name: &c.name,
            security: c.security_context.as_ref(),
            ports: ports(c.ports.as_ref()),
            resources: c.resources.as_ref(),
            ephemeral: false,
        });
    }
    for (i, c) in spec.ephemeral_containers.iter().flatten().enumerate() {
        out.push(Entry {
            path: format!("{root}.ephemeralContainers[{i}]"),
            name: &c.name,
            security: c.security_context.as_ref(),
            ports: ports(c.ports.as_ref()),
            resources: c.resources.as_ref(),
            ephemeral: true,
        });
    }
    out
}

fn pod_level(
    c: &mut Checker,
    spec: &PodSpec,
    annotations: Option<&BTreeMap<String, String>>,
    root: &str,
) {
    for (field, value) in [
        ("hostNetwork", spec.host_network),
        ("hostPID", spec.host_pid),
        ("hostIPC", spec.host_ipc),
    ] {
        if value == Some(true) {
            c.report(Rule::HostNamespaces, format!("{root}.{field}"), "is true");
        }
    }
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        volume(c, v, &format!("{root}.volumes[{i}]"));
    }
    for (key, value) in annotations.into_iter().flatten() {
        if key.starts_with(APPARMOR_ANNOTATION)
            && value != "runtime/default"
            && !value.starts_with("localhost/")
        {
            c.report(
                Rule::AppArmor,
                format!("metadata.annotations[{key}]"),
                format!("{value:?} is neither runtime/default nor localhost/*"),
            );
        }
    }
    let Some(sc) = spec.security_context.as_ref() else {
        return;
    };
    let p = format!("{root}.securityContext");
    if sc
        .windows_options
        .as_ref()
        .and_then(|w| w.host_process)
        .unwrap_or(false)
    {
        c.report(
            Rule::HostProcess,
            format!("{p}.windowsOptions.hostProcess"),
            "is true",
        );
    }
    if let Some(a) = &sc.app_armor_profile {
        app_armor(c, a, &format!("{p}.appArmorProfile.type"));
    }
    if let Some(s) = &sc.se_linux_options {
        se_linux(c, s, &format!("{p}.seLinuxOptions"));
    }
    if let Some(s) = &sc.seccomp_profile {
        seccomp(c, s, &format!("{p}.seccompProfile.type"));
    }
    for (i, s) in sc.sysctls.iter().flatten().enumerate() {
        if !SAFE_SYSCTLS.contains(&s.name.as_str()) {
            c.report(
                Rule::Sysctls,
                format!("{p}.sysctls[{i}].name"),
                format!("{:?} is not a safe sysctl", s.name),
            );
        }
    }
    if sc.run_as_non_root == Some(false) {
        c.report(Rule::RunAsNonRoot, format!("{p}.runAsNonRoot"), "is false");
    }
    if sc.run_as_user == Some(0) {
        c.report(Rule::RunAsUser, format!("{p}.runAsUser"), "is 0 (root)");
    }
}

fn volume(c: &mut Checker, v: &Volume, path: &str) {
    if v.host_path.is_some() {
        c.report(
            Rule::HostPathVolumes,
            format!("{path}.hostPath"),
            format!("volume {:?} mounts a host path", v.name),
        );
        return;
    }
    let allowed = v.config_map.is_some()
        || v.csi.is_some()
        || v.downward_api.is_some()
        || v.empty_dir.is_some()
        || v.ephemeral.is_some()
        || v.persistent_volume_claim.is_some()
        || v.projected.is_some()
        || v.secret.is_some();
    if !allowed {
        c.report(
            Rule::VolumeTypes,
            path.to_owned(),
            format!("volume {:?} has a type restricted pods may not use", v.name),
        );
    }
}

fn app_armor(c: &mut Checker, a: &AppArmorProfile, path: &str) {
    if a.type_ != "RuntimeDefault" && a.type_ != "Localhost" {
        c.report(
            Rule::AppArmor,
            path.to_owned(),
            format!("{:?} is neither RuntimeDefault nor Localhost", a.type_),
        );
    }
}

fn se_linux(c: &mut Checker, s: &SELinuxOptions, path: &str) {
    if let Some(t) = s.type_.as_deref().filter(|t| !t.is_empty())
        && !SELINUX_TYPES.contains(&t)
    {
        c.report(
            Rule::SeLinux,
            format!("{path}.type"),
            format!("{t:?} is not an allowed SELinux type"),
        );
    }
    for (field, value) in [("user", &s.user), ("role", &s.role)] {
        if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
            c.report(
                Rule::SeLinux,
                format!("{path}.{field}"),
                format!("{v:?} is set; it must be empty"),
            );
        }
    }
}

fn seccomp(c: &mut Checker, s: &SeccompProfile, path: &str) {
    if s.type_ != "RuntimeDefault" && s.type_ != "Localhost" {
        c.report(
            Rule::Seccomp,
            path.to_owned(),
            format!("{:?} is neither RuntimeDefault nor Localhost", s.type_),
        );
    }
}

fn capabilities(c: &mut Checker, caps: Option<&Capabilities>, path: &str) {
    let adds = caps.and_then(|c| c.add.as_ref());
    for (i, cap) in adds.into_iter().flatten().enumerate() {
        let name = cap.strip_prefix("CAP_").unwrap_or(cap);
        if !BASELINE_CAPABILITIES.contains(&name) {
            c.report(
                Rule::Capabilities,
                format!("{path}.add[{i}]"),
                format!("{cap:?} is not in the default capability set"),
            );
        } else if name != "NET_BIND_SERVICE" {
            c.report(
                Rule::RestrictedCapabilities,
                format!("{path}.add[{i}]"),
                format!("{cap:?} may not be added; only NET_BIND_SERVICE"),
            );
        }
    }
    let drops_all = caps
        .and_then(|c| c.drop.as_ref())
        .is_some_and(|d| d.iter().any(|d| d == "ALL"));
    if !drops_all {
        c.report(
            Rule::RestrictedCapabilities,
            format!("{path}.drop"),
            "must include ALL",
        );
    }
}

fn container(c: &mut Checker, e: &Entry<'_>, pod_sc: Option<&PodSecurityContext>) {
    let p = format!("{}.securityContext", e.path);
    let sc = e.security;
    for (i, host_port) in e.ports.iter().enumerate() {
        if let Some(port) = host_port.filter(|p| *p != 0) {
            c.report(
                Rule::HostPorts,
                format!("{}.ports[{i}].hostPort", e.path),
                format!("{port} is a host port"),
            );
        }
    }
    if sc
        .and_then(|s| s.windows_options.as_ref())
        .and_then(|w| w.host_process)
        .unwrap_or(false)
    {
        c.report(
            Rule::HostProcess,
            format!("{p}.windowsOptions.hostProcess"),
            "is true",
        );
    }
    if sc.and_then(|s| s.privileged) == Some(true) {
        c.report(Rule::Privileged, format!("{p}.privileged"), "is true");
    }
    capabilities(
        c,
        sc.and_then(|s| s.capabilities.as_ref()),
        &format!("{p}.capabilities"),
    );
    if let Some(a) = sc.and_then(|s| s.app_armor_profile.as_ref()) {
        app_armor(c, a, &format!("{p}.appArmorProfile.type"));
    }
    if let Some(s) = sc.and_then(|s| s.se_linux_options.as_ref()) {
        se_linux(c, s, &format!("{p}.seLinuxOptions"));
    }
    if let Some(m) = sc.and_then(|s| s.proc_mount.as_deref())
        && m != "Default"
    {
        c.report(
            Rule::ProcMount,
            format!("{p}.procMount"),
            format!("{m:?} is not Default"),
        );
    }
    // Seccomp: the container's own profile wins; otherwise the pod's
    // applies. Explicit bad values were reported where they are set.
    match sc.and_then(|s| s.seccomp_profile.as_ref()) {
        Some(s) => seccomp(c, s, &format!("{p}.seccompProfile.type")),
        None => {
            if pod_sc.and_then(|s| s.seccomp_profile.as_ref()).is_none() {
                c.report(
                    Rule::SeccompRequired,
                    format!("{p}.seccompProfile"),
                    "is unset on the container and on the pod",
                );
            }
        }
    }
    if sc.and_then(|s| s.allow_privilege_escalation) != Some(false) {
        c.report(
            Rule::PrivilegeEscalation,
            format!("{p}.allowPrivilegeEscalation"),
            "must be false",
        );
    }
    // runAsNonRoot: the container's value wins; a pod-level false was
    // reported on the pod, so an unset container only adds a violation when
    // the pod left the field unset too.
    match sc.and_then(|s| s.run_as_non_root) {
        Some(true) => {}
        Some(false) => c.report(Rule::RunAsNonRoot, format!("{p}.runAsNonRoot"), "is false"),
        None => {
            if pod_sc.and_then(|s| s.run_as_non_root).is_none() {
                c.report(
                    Rule::RunAsNonRoot,
                    format!("{p}.runAsNonRoot"),
                    "is unset on the container and on the pod",
                );
            }
        }
    }
    if sc.and_then(|s| s.run_as_user) == Some(0) {
        c.report(Rule::RunAsUser, format!("{p}.runAsUser"), "is 0 (root)");
    }
    if sc.and_then(|s| s.read_only_root_filesystem) != Some(true) {
        c.report(
            Rule::ReadOnlyRootFilesystem,
            format!("{p}.readOnlyRootFilesystem"),
            "must be true",
        );
    }
    if !e.ephemeral {
        let limits = e.resources.and_then(|r| r.limits.as_ref());
        for resource in ["cpu", "memory"] {
            if !limits.is_some_and(|l| l.contains_key(resource)) {
                c.report(
                    Rule::ResourceLimits,
                    format!("{}.resources.limits.{resource}", e.path),
                    format!("container {:?} sets no {resource} limit", e.name),
                );
            }
        }
    }
}

/// A [`RolloutHook`] that refuses to start a release whose pod template
/// breaks the pod security rules of its [`Level`].
///
/// Hooks see the rollout (service, version, slots), not what will be
/// deployed, so the hook is given the pod template at construction: one
/// for every service, optionally overridden per service. `before_deploy`
/// runs before the new slot is started, so a refused template rolls the
/// rollout back with nothing applied.
#[derive(Debug, Clone)]
pub struct PodSecurityHook {
    level: Level,
    template: PodTemplateSpec,
    per_service: BTreeMap<String, PodTemplateSpec>,
}

impl PodSecurityHook {
    /// A hook checking `template` at `level` for every rollout.
    pub fn new(level: Level, template: PodTemplateSpec) -> Self {
        Self {
            level,
            template,
            per_service: BTreeMap::new(),
        }
    }

    /// Checks `template` instead for rollouts of `service`.
    pub fn with_service_template(
        mut self,
        service: &ServiceName,
        template: PodTemplateSpec,
    ) -> Self {
        self.per_service.insert(service.to_string(), template);
        self
    }

    /// The violations of the template used for `service`.
    pub fn violations(&self, service: &ServiceName) -> Vec<Violation> {
        let template = self
            .per_service
            .get(&service.to_string())
            .unwrap_or(&self.template);
        check_pod_template(template, self.level)
    }
}

/// The error a refused template yields: [`Error::InvalidInput`] whose
/// field is `pod template of <service>` and whose rule lists every
/// violation, separated by `; `.
pub fn violations_error(service: &ServiceName, level: Level, violations: &[Violation]) -> Error {
    let list: Vec<String> = violations.iter().map(ToString::to_string).collect();
    Error::invalid(
        format!("pod template of {service}"),
        format!(
            "breaks the {level} pod security level ({} violations): {}",
            violations.len(),
            list.join("; ")
        ),
    )
}

#[async_trait]
impl RolloutHook for PodSecurityHook {
    fn name(&self) -> &str {
        "pod-security"
    }

    async fn before_deploy(&self, ctx: &HookContext) -> Result<()> {
        let violations = self.violations(&ctx.service);
        if violations.is_empty() {
            tracing::info!(service = %ctx.service, version = %ctx.version, level = %self.level, "pod template passes pod security");
            return Ok(());
        }
        tracing::warn!(
            service = %ctx.service,
            version = %ctx.version,
            level = %self.level,
            violations = violations.len(),
            "pod template refused by pod security"
        );
        Err(violations_error(&ctx.service, self.level, &violations))
    }
}
