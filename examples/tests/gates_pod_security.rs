//! The pod security checker of `atlas-k8s` as a quality gate of
//! `atlas-gates`: neither crate depends on the other; a program that uses
//! both wires the checker in through `PolicyGate`, as here.

use std::sync::Arc;

use atlas_core::ServiceName;
use atlas_gates::{GateContext, GateStatus, PolicyGate, QualityGates};
use atlas_k8s::security::{Level, check_pod_template};
use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec, SecurityContext};

fn template(privileged: bool) -> PodTemplateSpec {
    PodTemplateSpec {
        metadata: None,
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "app".into(),
                image: Some("registry.example/checkout:v3".into()),
                security_context: Some(SecurityContext {
                    privileged: Some(privileged),
                    ..SecurityContext::default()
                }),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
    }
}

/// The gate: the pod template's violations at `level`, one line each.
fn pod_security_gate(level: Level, template: PodTemplateSpec) -> PolicyGate {
    let template = Arc::new(template);
    PolicyGate::from_fn("pod-security", move |_ctx| {
        let violations = check_pod_template(&template, level);
        async move { Ok(violations.iter().map(ToString::to_string).collect()) }
    })
}

#[tokio::test]
async fn a_privileged_template_fails_the_policy_gate() {
    let ctx = GateContext::new(ServiceName::new("checkout").unwrap(), "v3");
    let ok = QualityGates::new().gate(pod_security_gate(Level::Baseline, template(false)));
    let report = ok.evaluate(&ctx).await;
    assert!(report.passed(), "{report}");

    let bad = QualityGates::new().gate(pod_security_gate(Level::Baseline, template(true)));
    let report = bad.evaluate(&ctx).await;
    assert_eq!(report.results[0].status, GateStatus::Failed);
    let text = report.to_string();
    assert!(
        text.contains("pod-security: 1 violations (spec.containers[0].securityContext.privileged"),
        "{text}"
    );
}
