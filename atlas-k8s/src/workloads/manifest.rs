//! The objects a slot is made of: its Deployment and its Service, built
//! from the user's pod template and a release.

use std::collections::BTreeMap;

use atlas_core::{Error, Release, Result, ServiceName, Slot};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Container, EnvVar, PodTemplateSpec, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Label naming the Atlas service a slot object belongs to.
pub const LABEL_SERVICE: &str = "atlas.dev/service";
/// Label naming the slot (`blue` or `green`) of a slot object.
pub const LABEL_SLOT: &str = "atlas.dev/slot";
/// The well-known application name label, set to the Atlas service name so
/// dashboards and `kubectl` group both slots as one application.
pub const LABEL_APP_NAME: &str = "app.kubernetes.io/name";
/// The well-known label saying which tool manages an object; set to `atlas`.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Annotation on the Deployment and its pod template holding the release
/// version. An annotation rather than a label because versions (`v1+build.7`)
/// need not be valid label values.
pub const ANNOTATION_VERSION: &str = "atlas.dev/version";
/// The annotation the ReplicaSet controller reads to choose which pods to
/// remove first when scaling down: lower costs go first.
pub const ANNOTATION_DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";
/// The label EndpointSlices carry naming the Service they belong to.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";

/// Longest service name whose slot objects (`<service>-green`) still fit
/// the 63-character limit Kubernetes puts on Service names.
pub const MAX_SERVICE_NAME: usize = 63 - "-green".len();

/// The name of the Deployment and of the Service of `slot`:
/// `<service>-blue` or `<service>-green`.
///
/// # Errors
/// [`Error::InvalidInput`] if the name would pass 63 characters.
pub fn slot_object_name(service: &ServiceName, slot: Slot) -> Result<String> {
    if service.as_str().len() > MAX_SERVICE_NAME {
        return Err(Error::invalid(
            format!("service name {service:?}"),
            format!(
                "must be at most {MAX_SERVICE_NAME} characters on Kubernetes, so that `{service}-green` is a valid Service name"
            ),
        ));
    }
    Ok(format!("{service}-{slot}"))
}

/// The labels that select a slot's pods. Kept to two labels that never
/// change, because a Deployment's selector is immutable.
pub(crate) fn selector_labels(service: &ServiceName, slot: Slot) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_SERVICE.to_owned(), service.to_string()),
        (LABEL_SLOT.to_owned(), slot.as_str().to_owned()),
    ])
}

/// Every label Atlas sets on a slot's objects and pods.
fn object_labels(service: &ServiceName, slot: Slot) -> BTreeMap<String, String> {
    let mut labels = selector_labels(service, slot);
    labels.insert(LABEL_APP_NAME.to_owned(), service.to_string());
    labels.insert(LABEL_MANAGED_BY.to_owned(), "atlas".to_owned());
    labels
}

/// Finds the container releases go into: the one named `name`, or the
/// first. `None` if there is no such container.
pub(crate) fn container_index(template: &PodTemplateSpec, name: Option<&str>) -> Option<usize> {
    let containers = &template.spec.as_ref()?.containers;
    match name {
        Some(name) => containers.iter().position(|c| c.name == name),
        None => (!containers.is_empty()).then_some(0),
    }
}

/// The slot's Deployment, as Atlas applies it: the template with the
/// release's image, args and env in the chosen container, Atlas's labels,
/// and the version annotation.
pub(crate) fn deployment(
    template: &PodTemplateSpec,
    container: usize,
    namespace: &str,
    service: &ServiceName,
    slot: Slot,
    release: &Release,
    replicas: u32,
) -> Result<Deployment> {
    let name = slot_object_name(service, slot)?;
    let replicas = i32::try_from(replicas)
        .map_err(|_| Error::invalid("replicas", "must fit a 32-bit signed integer"))?;
    let mut template = template.clone();
    let meta = template.metadata.get_or_insert_with(ObjectMeta::default);
    meta.labels
        .get_or_insert_with(BTreeMap::new)
        .extend(object_labels(service, slot));
    meta.annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(ANNOTATION_VERSION.to_owned(), release.version.clone());
    // The builder checked the container exists; a template without it is
    // refused rather than indexed.
    let target = template
        .spec
        .as_mut()
        .and_then(|spec| spec.containers.get_mut(container))
        .ok_or_else(|| {
            Error::invalid(
                "template.spec.containers",
                "the release's container is missing",
            )
        })?;
    apply_release(target, release);
    Ok(Deployment {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(namespace.to_owned()),
            labels: Some(object_labels(service, slot)),
            annotations: Some(BTreeMap::from([(
                ANNOTATION_VERSION.to_owned(),
                release.version.clone(),
            )])),
            ..ObjectMeta::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(selector_labels(service, slot)),
                ..LabelSelector::default()
            },
            template,
            ..DeploymentSpec::default()
        }),
        status: None,
    })
}

/// Puts the release into `container`: the image always; the args only when
/// the release has some (an empty list keeps the template's, so a template
/// can carry the command line); each env variable replaces the template's
/// variable of that name or is added after them.
fn apply_release(container: &mut Container, release: &Release) {
    container.image = Some(release.artifact.clone());
    if !release.args.is_empty() {
        container.args = Some(release.args.clone());
    }
    if release.env.is_empty() {
        return;
    }
    let env = container.env.get_or_insert_with(Vec::new);
    for (key, value) in &release.env {
        let var = EnvVar {
            name: key.clone(),
            value: Some(value.clone()),
            value_from: None,
        };
        match env.iter_mut().find(|v| v.name == *key) {
            Some(existing) => *existing = var,
            None => env.push(var),
        }
    }
}

/// The slot's Service: selects the slot's pods and exposes the container's
/// ports, so the EndpointSlice controller lists the slot's ready pods.
pub(crate) fn service(
    template: &PodTemplateSpec,
    container: usize,
    namespace: &str,
    service: &ServiceName,
    slot: Slot,
) -> Result<Service> {
    let ports = service_ports(template, container)?;
    Ok(Service {
        metadata: ObjectMeta {
            name: Some(slot_object_name(service, slot)?),
            namespace: Some(namespace.to_owned()),
            labels: Some(object_labels(service, slot)),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            selector: Some(selector_labels(service, slot)),
            ports: Some(ports),
            ..ServiceSpec::default()
        }),
        status: None,
    })
}

/// The container's ports as Service ports, named as in the container
/// (`port-<n>` where unnamed, because a Service with several ports needs
/// names). At least one: endpoints are addresses with a port.
pub(crate) fn service_ports(
    template: &PodTemplateSpec,
    container: usize,
) -> Result<Vec<ServicePort>> {
    let c = template
        .spec
        .as_ref()
        .and_then(|s| s.containers.get(container))
        .ok_or_else(|| {
            Error::invalid(
                "template.spec.containers",
                "the release's container is missing",
            )
        })?;
    let ports: Vec<ServicePort> = c
        .ports
        .iter()
        .flatten()
        .map(|p| ServicePort {
            name: Some(
                p.name
                    .clone()
                    .unwrap_or_else(|| format!("port-{}", p.container_port)),
            ),
            port: p.container_port,
            target_port: Some(IntOrString::Int(p.container_port)),
            protocol: p.protocol.clone(),
            ..ServicePort::default()
        })
        .collect();
    if ports.is_empty() {
        return Err(Error::invalid(
            format!("template.spec.containers[{}].ports", c.name),
            "must list at least one port: endpoints are reported as address and port",
        ));
    }
    Ok(ports)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ContainerPort, PodSpec};

    fn template() -> PodTemplateSpec {
        PodTemplateSpec {
            metadata: None,
            spec: Some(PodSpec {
                containers: vec![
                    Container {
                        name: "sidecar".into(),
                        image: Some("proxy:1".into()),
                        ..Container::default()
                    },
                    Container {
                        name: "app".into(),
                        args: Some(vec!["serve".into()]),
                        env: Some(vec![EnvVar {
                            name: "MODE".into(),
                            value: Some("a".into()),
                            value_from: None,
                        }]),
                        ports: Some(vec![ContainerPort {
                            container_port: 8080,
                            ..ContainerPort::default()
                        }]),
                        ..Container::default()
                    },
                ],
                ..PodSpec::default()
            }),
        }
    }

    #[test]
    fn the_release_goes_into_the_named_container_only() {
        let t = template();
        let i = container_index(&t, Some("app")).unwrap();
        let svc = ServiceName::new("shop").unwrap();
        let release = Release::new("v2", "shop:v2")
            .with_env("MODE", "b")
            .with_env("EXTRA", "1");
        let d = deployment(&t, i, "ns", &svc, Slot::Green, &release, 3).unwrap();
        let spec = d.spec.unwrap();
        assert_eq!(spec.replicas, Some(3));
        let pod = spec.template.spec.unwrap();
        assert_eq!(pod.containers[0].image.as_deref(), Some("proxy:1"));
        let app = &pod.containers[1];
        assert_eq!(app.image.as_deref(), Some("shop:v2"));
        assert_eq!(
            app.args,
            Some(vec!["serve".to_owned()]),
            "no release args keeps the template's"
        );
        let env: Vec<_> = app
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.as_str(), e.value.as_deref()))
            .collect();
        assert_eq!(env, [("MODE", Some("b")), ("EXTRA", Some("1"))]);
        assert_eq!(d.metadata.name.as_deref(), Some("shop-green"));
        let labels = spec.template.metadata.unwrap().labels.unwrap();
        assert_eq!(labels[LABEL_SLOT], "green");
        assert_eq!(labels[LABEL_SERVICE], "shop");
    }

    #[test]
    fn release_args_replace_the_template_args() {
        let t = template();
        let svc = ServiceName::new("shop").unwrap();
        let release = Release::new("v2", "shop:v2").with_arg("--port=9");
        let d = deployment(&t, 1, "ns", &svc, Slot::Blue, &release, 1).unwrap();
        let pod = d.spec.unwrap().template.spec.unwrap();
        assert_eq!(pod.containers[1].args, Some(vec!["--port=9".to_owned()]));
    }

    #[test]
    fn long_service_names_and_portless_containers_are_refused() {
        let long = ServiceName::new(format!("a{}", "b".repeat(57))).unwrap();
        let err = slot_object_name(&long, Slot::Green).unwrap_err();
        assert!(err.to_string().contains("at most 57"), "{err}");
        let err = service_ports(&template(), 0).unwrap_err();
        assert!(
            err.to_string().contains("containers[sidecar].ports"),
            "{err}"
        );
        assert_eq!(container_index(&template(), Some("nope")), None);
        assert_eq!(container_index(&template(), None), Some(0));
    }
}
