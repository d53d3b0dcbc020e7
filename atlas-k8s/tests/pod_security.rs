//! The pod security checker: one spec per rule breaking exactly that rule,
//! a compliant spec with no violation, pod-to-container inheritance, and
//! the rollout hook stopping a rollout before the workloads are touched.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use atlas_core::testing::{MemoryStateStore, MockWorkloads, RecordingRouter, ScriptedProbe};
use atlas_core::{
    BlueGreen, Engine, Outcome, Release, Rollout, ServiceName, Slot, Strategy, TrafficRouter,
    TrafficSplit, Workloads,
};
use atlas_k8s::security::{
    Level, PodSecurityHook, Rule, Violation, check_deployment, check_pod_spec, check_pod_template,
    violations_error,
};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    AppArmorProfile, Capabilities, ConfigMapVolumeSource, Container, ContainerPort,
    EmptyDirVolumeSource, EphemeralContainer, HostPathVolumeSource, ImageVolumeSource,
    NFSVolumeSource, PodSecurityContext, PodSpec, PodTemplateSpec, ResourceRequirements,
    SELinuxOptions, SeccompProfile, SecurityContext, Sysctl, Volume, WindowsSecurityContextOptions,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

fn hardened() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        read_only_root_filesystem: Some(true),
        ..SecurityContext::default()
    }
}

fn limits() -> ResourceRequirements {
    ResourceRequirements {
        limits: Some(BTreeMap::from([
            ("cpu".to_owned(), Quantity("500m".into())),
            ("memory".to_owned(), Quantity("1Gi".into())),
        ])),
        ..ResourceRequirements::default()
    }
}

/// A spec that passes every rule of [`Level::Atlas`]: one container, one
/// init container, one ephemeral container, two allowed volumes.
fn compliant() -> PodSpec {
    PodSpec {
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..PodSecurityContext::default()
        }),
        containers: vec![Container {
            name: "app".into(),
            image: Some("registry.example/checkout:v2".into()),
            ports: Some(vec![ContainerPort {
                container_port: 8080,
                ..ContainerPort::default()
            }]),
            security_context: Some(hardened()),
            resources: Some(limits()),
            ..Container::default()
        }],
        init_containers: Some(vec![Container {
            name: "migrate".into(),
            security_context: Some(hardened()),
            resources: Some(limits()),
            ..Container::default()
        }]),
        ephemeral_containers: Some(vec![EphemeralContainer {
            name: "debug".into(),
            security_context: Some(hardened()),
            ..EphemeralContainer::default()
        }]),
        volumes: Some(vec![
            Volume {
                name: "tmp".into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            },
            Volume {
                name: "config".into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: "checkout".into(),
                    ..ConfigMapVolumeSource::default()
                }),
                ..Volume::default()
            },
        ]),
        ..PodSpec::default()
    }
}

fn app(s: &mut PodSpec) -> &mut SecurityContext {
    s.containers[0].security_context.as_mut().unwrap()
}
fn init(s: &mut PodSpec) -> &mut SecurityContext {
    s.init_containers.as_mut().unwrap()[0]
        .security_context
        .as_mut()
        .unwrap()
}
fn eph(s: &mut PodSpec) -> &mut SecurityContext {
    s.ephemeral_containers.as_mut().unwrap()[0]
        .security_context
        .as_mut()
        .unwrap()
}
fn pod(s: &mut PodSpec) -> &mut PodSecurityContext {
    s.security_context.as_mut().unwrap()
}
fn volume(s: &mut PodSpec, v: Volume) {
    s.volumes.as_mut().unwrap().push(v);
}
fn seccomp(t: &str) -> Option<SeccompProfile> {
    Some(SeccompProfile {
        type_: t.into(),
        localhost_profile: (t == "Localhost").then(|| "profiles/app.json".into()),
    })
}
fn apparmor(t: &str) -> Option<AppArmorProfile> {
    Some(AppArmorProfile {
        type_: t.into(),
        localhost_profile: None,
    })
}
fn selinux(type_: Option<&str>, user: Option<&str>, role: Option<&str>) -> Option<SELinuxOptions> {
    Some(SELinuxOptions {
        type_: type_.map(Into::into),
        user: user.map(Into::into),
        role: role.map(Into::into),
        level: Some("s0:c123,c456".into()),
    })
}

type Mutation = fn(&mut PodSpec);

/// Sets one volume source.
type VolumeKind = fn(&mut Volume);

/// Each spec breaks exactly one rule at exactly one path.
fn table() -> Vec<(&'static str, Mutation, Rule, &'static str)> {
    vec![
        (
            "host network",
            |s| s.host_network = Some(true),
            Rule::HostNamespaces,
            "spec.hostNetwork",
        ),
        (
            "host pid",
            |s| s.host_pid = Some(true),
            Rule::HostNamespaces,
            "spec.hostPID",
        ),
        (
            "host ipc",
            |s| s.host_ipc = Some(true),
            Rule::HostNamespaces,
            "spec.hostIPC",
        ),
        (
            "host port",
            |s| s.containers[0].ports.as_mut().unwrap()[0].host_port = Some(8080),
            Rule::HostPorts,
            "spec.containers[0].ports[0].hostPort",
        ),
        (
            "hostPath volume",
            |s| {
                volume(
                    s,
                    Volume {
                        name: "docker".into(),
                        host_path: Some(HostPathVolumeSource {
                            path: "/var/run/docker.sock".into(),
                            type_: None,
                        }),
                        ..Volume::default()
                    },
                )
            },
            Rule::HostPathVolumes,
            "spec.volumes[2].hostPath",
        ),
        (
            "privileged container",
            |s| app(s).privileged = Some(true),
            Rule::Privileged,
            "spec.containers[0].securityContext.privileged",
        ),
        (
            "privileged init container",
            |s| init(s).privileged = Some(true),
            Rule::Privileged,
            "spec.initContainers[0].securityContext.privileged",
        ),
        (
            "privileged ephemeral container",
            |s| eph(s).privileged = Some(true),
            Rule::Privileged,
            "spec.ephemeralContainers[0].securityContext.privileged",
        ),
        (
            "windows host process on the pod",
            |s| {
                pod(s).windows_options = Some(WindowsSecurityContextOptions {
                    host_process: Some(true),
                    ..WindowsSecurityContextOptions::default()
                })
            },
            Rule::HostProcess,
            "spec.securityContext.windowsOptions.hostProcess",
        ),
        (
            "windows host process on a container",
            |s| {
                app(s).windows_options = Some(WindowsSecurityContextOptions {
                    host_process: Some(true),
                    ..WindowsSecurityContextOptions::default()
                })
            },
            Rule::HostProcess,
            "spec.containers[0].securityContext.windowsOptions.hostProcess",
        ),
        (
            "SYS_ADMIN added",
            |s| app(s).capabilities.as_mut().unwrap().add = Some(vec!["SYS_ADMIN".into()]),
            Rule::Capabilities,
            "spec.containers[0].securityContext.capabilities.add[0]",
        ),
        (
            "CAP_NET_RAW added to an init container",
            |s| init(s).capabilities.as_mut().unwrap().add = Some(vec!["CAP_NET_RAW".into()]),
            Rule::Capabilities,
            "spec.initContainers[0].securityContext.capabilities.add[0]",
        ),
        (
            "a default capability other than NET_BIND_SERVICE added",
            |s| {
                app(s).capabilities.as_mut().unwrap().add =
                    Some(vec!["NET_BIND_SERVICE".into(), "CHOWN".into()])
            },
            Rule::RestrictedCapabilities,
            "spec.containers[0].securityContext.capabilities.add[1]",
        ),
        (
            "ALL not dropped",
            |s| app(s).capabilities.as_mut().unwrap().drop = Some(vec!["NET_RAW".into()]),
            Rule::RestrictedCapabilities,
            "spec.containers[0].securityContext.capabilities.drop",
        ),
        (
            "no capabilities on the ephemeral container",
            |s| eph(s).capabilities = None,
            Rule::RestrictedCapabilities,
            "spec.ephemeralContainers[0].securityContext.capabilities.drop",
        ),
        (
            "AppArmor unconfined on a container",
            |s| app(s).app_armor_profile = apparmor("Unconfined"),
            Rule::AppArmor,
            "spec.containers[0].securityContext.appArmorProfile.type",
        ),
        (
            "AppArmor unconfined on the pod",
            |s| pod(s).app_armor_profile = apparmor("Unconfined"),
            Rule::AppArmor,
            "spec.securityContext.appArmorProfile.type",
        ),
        (
            "SELinux type spc_t",
            |s| app(s).se_linux_options = selinux(Some("spc_t"), None, None),
            Rule::SeLinux,
            "spec.containers[0].securityContext.seLinuxOptions.type",
        ),
        (
            "SELinux user on the pod",
            |s| pod(s).se_linux_options = selinux(None, Some("system_u"), None),
            Rule::SeLinux,
            "spec.securityContext.seLinuxOptions.user",
        ),
        (
            "SELinux role on an init container",
            |s| init(s).se_linux_options = selinux(Some("container_t"), None, Some("sysadm_r")),
            Rule::SeLinux,
            "spec.initContainers[0].securityContext.seLinuxOptions.role",
        ),
        (
            "procMount unmasked",
            |s| app(s).proc_mount = Some("Unmasked".into()),
            Rule::ProcMount,
            "spec.containers[0].securityContext.procMount",
        ),
        (
            "seccomp unconfined on the pod",
            |s| pod(s).seccomp_profile = seccomp("Unconfined"),
            Rule::Seccomp,
            "spec.securityContext.seccompProfile.type",
        ),
        (
            "seccomp unconfined on the ephemeral container",
            |s| eph(s).seccomp_profile = seccomp("Unconfined"),
            Rule::Seccomp,
            "spec.ephemeralContainers[0].securityContext.seccompProfile.type",
        ),
        (
            "unsafe sysctl",
            |s| {
                pod(s).sysctls = Some(vec![
                    Sysctl {
                        name: "net.ipv4.tcp_syncookies".into(),
                        value: "1".into(),
                    },
                    Sysctl {
                        name: "kernel.msgmax".into(),
                        value: "65536".into(),
                    },
                ])
            },
            Rule::Sysctls,
            "spec.securityContext.sysctls[1].name",
        ),
        (
            "nfs volume",
            |s| {
                volume(
                    s,
                    Volume {
                        name: "shared".into(),
                        nfs: Some(NFSVolumeSource {
                            server: "nfs.example".into(),
                            path: "/export".into(),
                            read_only: None,
                        }),
                        ..Volume::default()
                    },
                )
            },
            Rule::VolumeTypes,
            "spec.volumes[2]",
        ),
        (
            "image volume",
            |s| {
                volume(
                    s,
                    Volume {
                        name: "models".into(),
                        image: Some(ImageVolumeSource {
                            reference: Some("registry.example/models:1".into()),
                            pull_policy: None,
                        }),
                        ..Volume::default()
                    },
                )
            },
            Rule::VolumeTypes,
            "spec.volumes[2]",
        ),
        (
            "privilege escalation allowed",
            |s| app(s).allow_privilege_escalation = Some(true),
            Rule::PrivilegeEscalation,
            "spec.containers[0].securityContext.allowPrivilegeEscalation",
        ),
        (
            "privilege escalation unset on the init container",
            |s| init(s).allow_privilege_escalation = None,
            Rule::PrivilegeEscalation,
            "spec.initContainers[0].securityContext.allowPrivilegeEscalation",
        ),
        (
            "runAsNonRoot false on a container",
            |s| app(s).run_as_non_root = Some(false),
            Rule::RunAsNonRoot,
            "spec.containers[0].securityContext.runAsNonRoot",
        ),
        (
            "runAsNonRoot false on the pod",
            |s| pod(s).run_as_non_root = Some(false),
            Rule::RunAsNonRoot,
            "spec.securityContext.runAsNonRoot",
        ),
        (
            "runAsUser 0 on a container",
            |s| app(s).run_as_user = Some(0),
            Rule::RunAsUser,
            "spec.containers[0].securityContext.runAsUser",
        ),
        (
            "runAsUser 0 on the pod",
            |s| pod(s).run_as_user = Some(0),
            Rule::RunAsUser,
            "spec.securityContext.runAsUser",
        ),
        (
            "no seccomp profile for the app container",
            |s| {
                pod(s).seccomp_profile = None;
                init(s).seccomp_profile = seccomp("RuntimeDefault");
                eph(s).seccomp_profile = seccomp("Localhost");
            },
            Rule::SeccompRequired,
            "spec.containers[0].securityContext.seccompProfile",
        ),
        (
            "writable root filesystem",
            |s| app(s).read_only_root_filesystem = Some(false),
            Rule::ReadOnlyRootFilesystem,
            "spec.containers[0].securityContext.readOnlyRootFilesystem",
        ),
        (
            "writable root filesystem on the ephemeral container",
            |s| eph(s).read_only_root_filesystem = None,
            Rule::ReadOnlyRootFilesystem,
            "spec.ephemeralContainers[0].securityContext.readOnlyRootFilesystem",
        ),
        (
            "no memory limit",
            |s| {
                s.containers[0]
                    .resources
                    .as_mut()
                    .unwrap()
                    .limits
                    .as_mut()
                    .unwrap()
                    .remove("memory");
            },
            Rule::ResourceLimits,
            "spec.containers[0].resources.limits.memory",
        ),
        (
            "no cpu limit on the init container",
            |s| {
                s.init_containers.as_mut().unwrap()[0].resources = Some(ResourceRequirements {
                    limits: Some(BTreeMap::from([(
                        "memory".to_owned(),
                        Quantity("1Gi".into()),
                    )])),
                    ..ResourceRequirements::default()
                });
            },
            Rule::ResourceLimits,
            "spec.initContainers[0].resources.limits.cpu",
        ),
    ]
}

#[test]
fn the_compliant_spec_passes_every_level() {
    for level in [Level::Baseline, Level::Restricted, Level::Atlas] {
        assert_eq!(check_pod_spec(&compliant(), level), [], "{level}");
    }
}

#[test]
fn each_spec_breaks_exactly_its_rule_at_its_path() {
    let table = table();
    assert!(table.len() >= 30, "{} cases", table.len());
    for (name, mutate, rule, path) in &table {
        let mut spec = compliant();
        mutate(&mut spec);
        let found = check_pod_spec(&spec, Level::Atlas);
        assert_eq!(found.len(), 1, "{name}: {found:#?}");
        assert_eq!(
            (found[0].rule, found[0].path.as_str()),
            (*rule, *path),
            "{name}"
        );
        assert!(!found[0].detail.is_empty(), "{name}");
        // The rule belongs to its level: reported there, not below.
        let at_level = check_pod_spec(&spec, rule.level());
        assert_eq!(at_level, found, "{name} at {}", rule.level());
        let below = match rule.level() {
            Level::Baseline => None,
            Level::Restricted => Some(Level::Baseline),
            Level::Atlas => Some(Level::Restricted),
        };
        if let Some(below) = below {
            assert_eq!(check_pod_spec(&spec, below), [], "{name} at {below}");
        }
    }
    let mut covered: Vec<Rule> = table.iter().map(|(_, _, r, _)| *r).collect();
    covered.sort();
    covered.dedup();
    assert_eq!(covered, Rule::ALL, "every rule has a case");
}

#[test]
fn allowed_values_pass() {
    let mut s = compliant();
    app(&mut s).capabilities.as_mut().unwrap().add = Some(vec!["NET_BIND_SERVICE".into()]);
    app(&mut s).se_linux_options = selinux(Some("container_init_t"), Some(""), None);
    app(&mut s).app_armor_profile = apparmor("RuntimeDefault");
    app(&mut s).proc_mount = Some("Default".into());
    app(&mut s).seccomp_profile = seccomp("Localhost");
    app(&mut s).run_as_user = Some(10001);
    pod(&mut s).app_armor_profile = apparmor("Localhost");
    pod(&mut s).sysctls = Some(vec![Sysctl {
        name: "net.ipv4.ip_unprivileged_port_start".into(),
        value: "0".into(),
    }]);
    s.containers[0].ports.as_mut().unwrap()[0].host_port = Some(0);
    let kinds: [(&str, VolumeKind); 6] = [
        ("secret", |v| v.secret = Some(Default::default())),
        ("pvc", |v| {
            v.persistent_volume_claim = Some(Default::default())
        }),
        ("projected", |v| v.projected = Some(Default::default())),
        ("downward", |v| v.downward_api = Some(Default::default())),
        ("csi", |v| v.csi = Some(Default::default())),
        ("ephemeral", |v| v.ephemeral = Some(Default::default())),
    ];
    for (name, v) in kinds {
        let mut vol = Volume {
            name: name.into(),
            ..Volume::default()
        };
        v(&mut vol);
        volume(&mut s, vol);
    }
    assert_eq!(check_pod_spec(&s, Level::Atlas), []);
}

#[test]
fn a_bare_pod_passes_baseline_and_fails_restricted_on_the_hardening_fields() {
    let spec = PodSpec {
        containers: vec![Container {
            name: "app".into(),
            ..Container::default()
        }],
        ..PodSpec::default()
    };
    assert_eq!(check_pod_spec(&spec, Level::Baseline), []);
    let restricted: Vec<(Rule, String)> = check_pod_spec(&spec, Level::Restricted)
        .into_iter()
        .map(|v| (v.rule, v.path))
        .collect();
    let p = "spec.containers[0].securityContext";
    assert_eq!(
        restricted,
        [
            (
                Rule::RestrictedCapabilities,
                format!("{p}.capabilities.drop")
            ),
            (Rule::SeccompRequired, format!("{p}.seccompProfile")),
            (
                Rule::PrivilegeEscalation,
                format!("{p}.allowPrivilegeEscalation")
            ),
            (Rule::RunAsNonRoot, format!("{p}.runAsNonRoot")),
        ]
    );
    let atlas = check_pod_spec(&spec, Level::Atlas);
    assert_eq!(atlas.len(), 7, "{atlas:#?}");
    assert!(atlas.iter().any(|v| v.rule == Rule::ReadOnlyRootFilesystem));
    assert_eq!(
        atlas
            .iter()
            .filter(|v| v.rule == Rule::ResourceLimits)
            .count(),
        2
    );
}

fn rules_and_paths(spec: &PodSpec) -> Vec<(Rule, String)> {
    check_pod_spec(spec, Level::Restricted)
        .into_iter()
        .map(|v| (v.rule, v.path))
        .collect()
}

#[test]
fn run_as_non_root_is_inherited_from_the_pod() {
    // Set on every container, unset on the pod: compliant.
    let mut s = compliant();
    pod(&mut s).run_as_non_root = None;
    for c in [app, init, eph] {
        c(&mut s).run_as_non_root = Some(true);
    }
    assert_eq!(rules_and_paths(&s), []);

    // Unset on the pod and on one container: only that container.
    init(&mut s).run_as_non_root = None;
    assert_eq!(
        rules_and_paths(&s),
        [(
            Rule::RunAsNonRoot,
            "spec.initContainers[0].securityContext.runAsNonRoot".into()
        )]
    );

    // False on the pod is refused even when every container says true.
    let mut s = compliant();
    pod(&mut s).run_as_non_root = Some(false);
    for c in [app, init, eph] {
        c(&mut s).run_as_non_root = Some(true);
    }
    assert_eq!(
        rules_and_paths(&s),
        [(
            Rule::RunAsNonRoot,
            "spec.securityContext.runAsNonRoot".into()
        )]
    );

    // True on the pod, false on one container: the container's value wins.
    let mut s = compliant();
    eph(&mut s).run_as_non_root = Some(false);
    assert_eq!(
        rules_and_paths(&s),
        [(
            Rule::RunAsNonRoot,
            "spec.ephemeralContainers[0].securityContext.runAsNonRoot".into()
        )]
    );
}

#[test]
fn seccomp_is_inherited_from_the_pod() {
    // The pod's profile covers containers that set none; a container's own
    // Localhost profile overrides it.
    let mut s = compliant();
    app(&mut s).seccomp_profile = seccomp("Localhost");
    assert_eq!(rules_and_paths(&s), []);

    // Every container sets one, the pod none: compliant.
    let mut s = compliant();
    pod(&mut s).seccomp_profile = None;
    for c in [app, init, eph] {
        c(&mut s).seccomp_profile = seccomp("RuntimeDefault");
    }
    assert_eq!(rules_and_paths(&s), []);

    // No profile anywhere: every container is reported.
    let mut s = compliant();
    pod(&mut s).seccomp_profile = None;
    let paths: Vec<String> = rules_and_paths(&s)
        .into_iter()
        .inspect(|(r, _)| assert_eq!(*r, Rule::SeccompRequired))
        .map(|(_, p)| p)
        .collect();
    assert_eq!(
        paths,
        [
            "spec.containers[0].securityContext.seccompProfile",
            "spec.initContainers[0].securityContext.seccompProfile",
            "spec.ephemeralContainers[0].securityContext.seccompProfile",
        ]
    );

    // An unconfined pod is refused at the pod even when every container
    // overrides it, and only there.
    let mut s = compliant();
    pod(&mut s).seccomp_profile = seccomp("Unconfined");
    for c in [app, init, eph] {
        c(&mut s).seccomp_profile = seccomp("RuntimeDefault");
    }
    assert_eq!(
        rules_and_paths(&s),
        [(
            Rule::Seccomp,
            "spec.securityContext.seccompProfile.type".into()
        )]
    );
}

#[test]
fn run_as_user_zero_on_the_pod_is_refused_even_when_containers_override_it() {
    let mut s = compliant();
    pod(&mut s).run_as_user = Some(0);
    for c in [app, init, eph] {
        c(&mut s).run_as_user = Some(1000);
    }
    assert_eq!(
        rules_and_paths(&s),
        [(Rule::RunAsUser, "spec.securityContext.runAsUser".into())]
    );
    // A non-root pod user with a root container: the container is reported.
    let mut s = compliant();
    pod(&mut s).run_as_user = Some(1000);
    init(&mut s).run_as_user = Some(0);
    assert_eq!(
        rules_and_paths(&s),
        [(
            Rule::RunAsUser,
            "spec.initContainers[0].securityContext.runAsUser".into()
        )]
    );
}

fn template_of(spec: PodSpec) -> PodTemplateSpec {
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(BTreeMap::from([("app".into(), "checkout".into())])),
            ..ObjectMeta::default()
        }),
        spec: Some(spec),
    }
}

#[test]
fn templates_and_deployments_prefix_their_paths() {
    let mut s = compliant();
    app(&mut s).privileged = Some(true);
    let t = template_of(s);
    let v = check_pod_template(&t, Level::Atlas);
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].path, "spec.containers[0].securityContext.privileged");

    let d = Deployment {
        metadata: ObjectMeta {
            name: Some("checkout-green".into()),
            ..ObjectMeta::default()
        },
        spec: Some(DeploymentSpec {
            selector: LabelSelector::default(),
            template: t,
            ..DeploymentSpec::default()
        }),
        status: None,
    };
    let v = check_deployment(&d, Level::Atlas);
    assert_eq!(v.len(), 1);
    assert_eq!(
        v[0].path,
        "spec.template.spec.containers[0].securityContext.privileged"
    );
    assert_eq!(
        v[0].to_string(),
        "spec.template.spec.containers[0].securityContext.privileged: is true (baseline rule privileged containers)"
    );
}

#[test]
fn apparmor_annotations_on_the_template_are_checked() {
    let mut t = template_of(compliant());
    let annotations = BTreeMap::from([
        (
            "container.apparmor.security.beta.kubernetes.io/app".to_owned(),
            "runtime/default".to_owned(),
        ),
        (
            "container.apparmor.security.beta.kubernetes.io/migrate".to_owned(),
            "localhost/app-profile".to_owned(),
        ),
    ]);
    t.metadata.as_mut().unwrap().annotations = Some(annotations);
    assert_eq!(check_pod_template(&t, Level::Baseline), []);
    t.metadata
        .as_mut()
        .unwrap()
        .annotations
        .as_mut()
        .unwrap()
        .insert(
            "container.apparmor.security.beta.kubernetes.io/debug".to_owned(),
            "unconfined".to_owned(),
        );
    let v = check_pod_template(&t, Level::Baseline);
    assert_eq!(v.len(), 1, "{v:#?}");
    assert_eq!(v[0].rule, Rule::AppArmor);
    assert_eq!(
        v[0].path,
        "metadata.annotations[container.apparmor.security.beta.kubernetes.io/debug]"
    );
}

#[test]
fn the_error_lists_every_violation() {
    let mut s = compliant();
    s.host_network = Some(true);
    app(&mut s).privileged = Some(true);
    let v: Vec<Violation> = check_pod_spec(&s, Level::Restricted);
    let svc = ServiceName::new("checkout").unwrap();
    let err = violations_error(&svc, Level::Restricted, &v);
    let atlas_core::Error::InvalidInput { field, rule } = err else {
        panic!("expected InvalidInput");
    };
    assert_eq!(field, "pod template of checkout");
    assert!(rule.contains("2 violations"), "{rule}");
    assert!(rule.contains("spec.hostNetwork: is true"), "{rule}");
    assert!(
        rule.contains("spec.containers[0].securityContext.privileged: is true"),
        "{rule}"
    );
}

struct World {
    svc: ServiceName,
    workloads: MockWorkloads,
    router: RecordingRouter,
}

async fn world() -> World {
    let svc = ServiceName::new("checkout").unwrap();
    let workloads = MockWorkloads::new().with_ready_delay(Duration::from_secs(5));
    let router = RecordingRouter::new();
    workloads
        .deploy(&svc, Slot::Blue, &Release::new("v1", "checkout:v1"), 2)
        .await
        .unwrap();
    router
        .set_split(&svc, &TrafficSplit::all_to(Slot::Blue))
        .await
        .unwrap();
    World {
        svc,
        workloads,
        router,
    }
}

async fn roll_out(w: &World, hook: PodSecurityHook) -> Outcome {
    let engine = Engine::builder()
        .workloads(Arc::new(w.workloads.clone()))
        .router(Arc::new(w.router.clone()))
        .probe(Arc::new(ScriptedProbe::new()))
        .store(Arc::new(MemoryStateStore::new()))
        .hook(Arc::new(hook))
        .build()
        .unwrap();
    let rollout = Rollout::new(
        w.svc.clone(),
        Release::new("v2", "checkout:v2"),
        Strategy::BlueGreen(BlueGreen::new(2)),
    );
    engine.start(rollout).await.unwrap().wait().await.unwrap()
}

fn deploys(w: &World) -> usize {
    w.workloads
        .calls()
        .iter()
        .filter(|c| matches!(c, atlas_core::testing::WorkloadsCall::Deploy { .. }))
        .count()
}

#[tokio::test(start_paused = true)]
async fn the_hook_stops_a_rollout_of_a_privileged_template_before_any_deploy() {
    let w = world().await;
    assert_eq!(deploys(&w), 1, "only the setup deploy of v1");
    let mut s = compliant();
    app(&mut s).privileged = Some(true);
    app(&mut s).read_only_root_filesystem = None;
    let hook = PodSecurityHook::new(Level::Atlas, template_of(s));
    let outcome = roll_out(&w, hook).await;
    let Outcome::RolledBack { reason } = outcome else {
        panic!("expected a rollback, got {outcome:?}");
    };
    assert!(
        reason.contains("hook pod-security (before_deploy) failed"),
        "{reason}"
    );
    assert!(
        reason.contains("spec.containers[0].securityContext.privileged"),
        "{reason}"
    );
    assert!(
        reason.contains("spec.containers[0].securityContext.readOnlyRootFilesystem"),
        "{reason}"
    );
    assert_eq!(deploys(&w), 1, "no deploy call: {:?}", w.workloads.calls());
    assert_eq!(w.workloads.replicas(&w.svc, Slot::Green), 0);
    assert_eq!(
        w.workloads.version(&w.svc, Slot::Blue).as_deref(),
        Some("v1")
    );
    assert_eq!(
        w.router.current(&w.svc),
        Some(TrafficSplit::all_to(Slot::Blue))
    );
}

#[tokio::test(start_paused = true)]
async fn the_hook_lets_a_compliant_template_roll_out() {
    let w = world().await;
    let hook = PodSecurityHook::new(Level::Atlas, template_of(compliant()));
    let outcome = roll_out(&w, hook).await;
    assert_eq!(
        outcome,
        Outcome::Promoted {
            version: "v2".into()
        }
    );
    assert_eq!(
        w.workloads.version(&w.svc, Slot::Green).as_deref(),
        Some("v2")
    );
}

#[tokio::test(start_paused = true)]
async fn a_per_service_template_overrides_the_default() {
    let w = world().await;
    let mut bad = compliant();
    bad.host_pid = Some(true);
    let other = ServiceName::new("billing").unwrap();
    // The default is compliant; checkout's own template is not.
    let hook = PodSecurityHook::new(Level::Baseline, template_of(compliant()))
        .with_service_template(&w.svc, template_of(bad));
    assert_eq!(hook.violations(&other), []);
    assert_eq!(hook.violations(&w.svc)[0].path, "spec.hostPID");
    let outcome = roll_out(&w, hook).await;
    assert!(matches!(outcome, Outcome::RolledBack { .. }), "{outcome:?}");
    assert_eq!(deploys(&w), 1);
}

#[test]
fn windows_pods_are_exempt_from_the_linux_only_rules() {
    let spec = PodSpec {
        os: Some(k8s_openapi::api::core::v1::PodOS {
            name: "windows".into(),
        }),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            ..PodSecurityContext::default()
        }),
        containers: vec![Container {
            name: "app".into(),
            resources: Some(limits()),
            ..Container::default()
        }],
        ..PodSpec::default()
    };
    assert_eq!(check_pod_spec(&spec, Level::Atlas), []);
    // The same spec on Linux breaks four rules.
    let linux = PodSpec {
        os: None,
        ..spec.clone()
    };
    let rules: Vec<Rule> = check_pod_spec(&linux, Level::Atlas)
        .into_iter()
        .map(|v| v.rule)
        .collect();
    assert_eq!(
        rules,
        [
            Rule::RestrictedCapabilities,
            Rule::SeccompRequired,
            Rule::PrivilegeEscalation,
            Rule::ReadOnlyRootFilesystem,
        ]
    );
    // Windows pods are not exempt from the rest, e.g. host process.
    let mut host = spec;
    host.security_context.as_mut().unwrap().windows_options = Some(WindowsSecurityContextOptions {
        host_process: Some(true),
        ..WindowsSecurityContextOptions::default()
    });
    host.host_network = Some(true);
    let rules: Vec<Rule> = check_pod_spec(&host, Level::Atlas)
        .into_iter()
        .map(|v| v.rule)
        .collect();
    assert_eq!(rules, [Rule::HostNamespaces, Rule::HostProcess]);
}
