//! The blue-green rollout of the `blue_green` example, on Kubernetes.
//!
//! Atlas deploys v1 of a service to the blue slot (a Deployment
//! `<service>-blue` and its Service, through `KubeWorkloads`), then rolls
//! out v2 to green and moves traffic 5 → 25 → 50 → 75 → 100 % through the
//! chosen router, then scales blue to zero. The rollout state and the
//! rollout lock live in the namespace too (`KubeStateStore`: a ConfigMap
//! and a Lease named `atlas-rollout-<service>`). The same
//! `atlas_core::Engine` drives it as on local processes.
//!
//! The router decides the steps:
//! - `--router gateway` (default): a Gateway API HTTPRoute with weighted
//!   backends, attached to the Gateway `--gateway`; every step is real.
//! - `--router nginx`: ingress-nginx's canary Ingress with
//!   `canary-weight` for the host `--host`; every step is real.
//! - `--router service`: one Service whose selector switches slot. A
//!   Service cannot split traffic, so the rollout has a single step, 100 %.
//!
//! Health: Kubernetes only lists a pod among a slot's endpoints once its
//! readiness probe (`--health-path`) passes, so by default
//! (`--probe kubernetes`) Atlas trusts that and its own probe always
//! passes. `--probe http` probes every endpoint over HTTP itself, which
//! needs the pod network reachable from where this runs (inside the
//! cluster, or a kind cluster on Linux). Metric analysis is omitted: a bare
//! cluster has no metrics for Atlas to read; `canary_prometheus` shows
//! analysis against Prometheus.
//!
//! With `--dry-run` no cluster is needed: the client talks to an
//! in-process API (kube-fake-client) while a task plays the Deployment,
//! ReplicaSet and EndpointSlice controllers so that Deployments become
//! ready and slots get endpoints, and every request the client makes is
//! printed to stdout before it is answered: method, path with query,
//! content type and the body as one line of JSON (`--writes-only` leaves
//! out the GETs). Atlas's probe always passes there, as above.
//!
//! Run:
//! - `cargo run -p atlas-examples --example k8s_blue_green -- --dry-run`
//! - against a cluster from `KUBECONFIG` (a Gateway named `public` with a
//!   Gateway API implementation installed):
//!   `cargo run -p atlas-examples --example k8s_blue_green -- --namespace shop`
//!
//! `RUST_LOG=atlas_core=info,atlas_k8s=debug` shows the tracing events.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use atlas_core::testing::ScriptedProbe;
use atlas_core::{
    BlueGreen, Engine, EventKind, HealthProbe, Outcome, ProbePolicy, Release, Rollout,
    RolloutEvent, ServiceName, Strategy, TrafficRouter, Weight,
};
use atlas_k8s::router::{GatewayApiRouter, GatewayParent};
use atlas_k8s::testing::{RecordedRequest, RecordingService, play_controllers};
use atlas_k8s::{KubeStateStore, KubeWorkloads, NginxIngressRouter, ServiceSelectorRouter};
use atlas_metrics::probe::HttpProbe;
use clap::{Parser, ValueEnum};
use gateway_api::httproutes::HttpRoute;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use serde_json::json;
use tokio::sync::broadcast;

/// A blue-green rollout of two releases on Kubernetes: v1 to blue, then
/// v2 to green through 5/25/50/75/100 %.
#[derive(Debug, Parser)]
#[command(name = "k8s_blue_green", version, args_override_self = true)]
struct Args {
    /// Talk to an in-process fake API and print every request instead of
    /// using the cluster from KUBECONFIG.
    #[arg(long)]
    dry_run: bool,
    /// With --dry-run, print only the requests that change something.
    #[arg(long, requires = "dry_run")]
    writes_only: bool,
    /// The namespace of every object.
    #[arg(long, value_name = "NAME", default_value = "default")]
    namespace: String,
    /// How traffic moves between the slots.
    #[arg(long, value_enum, default_value_t = RouterChoice::Gateway)]
    router: RouterChoice,
    /// The service's name: Deployments `<service>-blue` and
    /// `<service>-green`, and the route, are named after it.
    #[arg(long, value_name = "NAME", default_value = "shop")]
    service: String,
    /// The image of the first release.
    #[arg(
        long,
        value_name = "IMAGE",
        default_value = "ghcr.io/stefanprodan/podinfo:6.7.0"
    )]
    image_v1: String,
    /// The image of the second release.
    #[arg(
        long,
        value_name = "IMAGE",
        default_value = "ghcr.io/stefanprodan/podinfo:6.7.1"
    )]
    image_v2: String,
    /// The port the container listens on (and each slot Service exposes).
    #[arg(long, value_name = "PORT", default_value_t = 9898)]
    port: u16,
    /// The HTTP path of the container's readiness probe.
    #[arg(long, value_name = "PATH", default_value = "/readyz")]
    health_path: String,
    /// Replicas of each release.
    #[arg(long, value_name = "N", default_value_t = 3)]
    replicas: u32,
    /// With --router gateway: the Gateway the HTTPRoute attaches to.
    #[arg(long, value_name = "NAME", default_value = "public")]
    gateway: String,
    /// With --router nginx: the host the Ingresses serve.
    #[arg(long, value_name = "HOST", default_value = "shop.example.com")]
    host: String,
    /// How Atlas checks each new replica's health.
    #[arg(long, value_enum, default_value_t = ProbeChoice::Kubernetes)]
    probe: ProbeChoice,
    /// How long the old slot keeps running after the new one takes all
    /// traffic (ignored with --dry-run, which waits 100ms).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    scale_down_delay: Duration,
}

/// The traffic routers this example can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum RouterChoice {
    /// One Service's selector: all traffic at once (a single 100 % step).
    Service,
    /// A Gateway API HTTPRoute with weighted backends.
    Gateway,
    /// ingress-nginx's canary Ingress with `canary-weight`.
    Nginx,
}

/// How new replicas are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ProbeChoice {
    /// Trust the pods' readiness probes: only ready pods are endpoints.
    Kubernetes,
    /// GET the health path on every endpoint from this process as well.
    Http,
}

fn main() -> ExitCode {
    // kube talks TLS through rustls; pick its provider before any
    // connection, as every binary of the workspace does.
    atlas_metrics::tls::install_default_crypto_provider();
    let args = Args::parse();
    atlas_examples::main_support::init_tracing("error");
    atlas_examples::main_support::run("k8s_blue_green", run(args))
}

async fn run(args: Args) -> Result<bool, Box<dyn std::error::Error>> {
    let t0 = Instant::now();
    let svc = ServiceName::new(&args.service)?;
    let client = if args.dry_run {
        dry_run_client(&args.namespace, args.writes_only).await?
    } else {
        kube::Client::try_default().await?
    };
    let ns = args.namespace.as_str();
    let workloads = KubeWorkloads::builder(client.clone(), ns, template(&args)?)
        .container("app")
        .build()?;
    let router: Arc<dyn TrafficRouter> = match args.router {
        RouterChoice::Service => {
            Arc::new(ServiceSelectorRouter::new(client.clone(), ns, args.port))
        }
        RouterChoice::Gateway => Arc::new(GatewayApiRouter::new(
            client.clone(),
            ns,
            args.port,
            GatewayParent::new(&args.gateway),
        )),
        RouterChoice::Nginx => Arc::new(NginxIngressRouter::new(
            client.clone(),
            ns,
            &args.host,
            args.port,
        )),
    };
    let probe: Arc<dyn HealthProbe> = match (args.dry_run, args.probe) {
        (false, ProbeChoice::Http) => Arc::new(HttpProbe::get(&args.health_path)?),
        // Healthy by default, for every endpoint: the readiness probe
        // already decided which pods are endpoints.
        _ => Arc::new(ScriptedProbe::new()),
    };
    let engine = Engine::builder()
        .workloads(Arc::new(workloads))
        .router(router)
        .probe(probe)
        .store(Arc::new(KubeStateStore::new(client, ns)?))
        .poll_interval(if args.dry_run {
            Duration::from_millis(50)
        } else {
            Duration::from_secs(1)
        })
        .build()?;
    println!(
        "Atlas blue-green on Kubernetes: service {svc} in namespace {ns}, router {:?}{}",
        args.router,
        if args.dry_run { " (dry run)" } else { "" }
    );
    let progress = tokio::spawn(show_events(engine.subscribe(), t0));

    section("1/2 deploy v1 to blue (first release: no canary, nothing to compare with)");
    let v1 = engine
        .start(rollout(&args, &svc, "v1", &args.image_v1))
        .await?
        .wait()
        .await?;
    section("2/2 roll out v2 to green");
    let v2 = if matches!(v1, Outcome::Promoted { .. }) {
        Some(
            engine
                .start(rollout(&args, &svc, "v2", &args.image_v2))
                .await?
                .wait()
                .await?,
        )
    } else {
        None
    };
    drop(engine);
    let _ = progress.await;

    section("summary");
    println!("  v1: {v1}");
    match &v2 {
        Some(v2) => println!("  v2: {v2}"),
        None => println!("  v2: not started"),
    }
    println!("  total time: {:.1}s", t0.elapsed().as_secs_f64());
    Ok(matches!(v2, Some(Outcome::Promoted { .. })))
}

/// A client over kube-fake-client that prints each request before the
/// fake answers it, with a task playing the controllers on the side.
async fn dry_run_client(
    namespace: &str,
    writes_only: bool,
) -> Result<kube::Client, Box<dyn std::error::Error>> {
    let fake = kube_fake_client::ClientBuilder::new()
        .with_status_subresource::<Deployment>()
        .with_resource::<HttpRoute>()
        .build()
        .await?;
    // The controllers use the fake directly: their own requests are what
    // a cluster does by itself, not what Atlas would send.
    tokio::spawn(play_controllers(fake.clone(), namespace.to_owned()));
    let (service, log) = RecordingService::new(fake);
    log.on_request(move |r| {
        if !writes_only || r.is_write() {
            print_request(r);
        }
    });
    Ok(kube::Client::new(service, namespace.to_owned()))
}

fn print_request(r: &RecordedRequest) {
    let ct = r
        .content_type
        .as_deref()
        .map(|c| format!("  [{c}]"))
        .unwrap_or_default();
    println!("  > {} {}{ct}", r.method, r.path);
    if let Some(body) = &r.body {
        println!("      {body}");
    }
}

/// The pod template both releases share; KubeWorkloads sets the image
/// and version of each release on the container `app`.
fn template(args: &Args) -> Result<PodTemplateSpec, serde_json::Error> {
    serde_json::from_value(json!({
        "spec": {"containers": [{
            "name": "app",
            "ports": [{"name": "http", "containerPort": args.port}],
            "readinessProbe": {"httpGet": {"path": args.health_path, "port": "http"}},
        }]}
    }))
}

fn rollout(args: &Args, svc: &ServiceName, version: &str, image: &str) -> Rollout {
    let mut strategy = BlueGreen::new(args.replicas);
    if args.router == RouterChoice::Service {
        // A Service selector moves all traffic at once.
        strategy.traffic_steps = vec![Weight::FULL];
    }
    strategy.scale_down_delay = if args.dry_run {
        Duration::from_millis(100)
    } else {
        args.scale_down_delay
    };
    let (period, deadline) = if args.dry_run {
        (Duration::from_millis(50), Duration::from_secs(30))
    } else {
        (Duration::from_secs(2), Duration::from_secs(600))
    };
    Rollout::new(
        svc.clone(),
        Release::new(version, image),
        Strategy::BlueGreen(strategy),
    )
    .with_probe(ProbePolicy {
        period,
        ..ProbePolicy::default()
    })
    .with_progress_deadline(deadline)
}

fn section(title: &str) {
    println!("\n== {title}");
}

async fn show_events(mut rx: broadcast::Receiver<RolloutEvent>, t0: Instant) {
    loop {
        let e = match rx.recv().await {
            Ok(e) => e,
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let line = match e.kind {
            EventKind::StepStarted { index, total, step } => {
                format!("step {}/{total}: {step}", index + 1)
            }
            EventKind::WeightChanged { split } => format!("traffic now {split}"),
            EventKind::Probed {
                endpoint,
                healthy,
                detail,
            } => format!(
                "probe {}: {}",
                endpoint.replica,
                if healthy {
                    detail
                } else {
                    format!("FAILED {detail}")
                }
            ),
            EventKind::Aborted { reason } => format!("ABORTED: {reason}"),
            EventKind::Promoted { version } => format!("PROMOTED {version}"),
            EventKind::RolledBack { .. } => {
                "ROLLED BACK: all traffic returned to the stable slot".to_string()
            }
            _ => continue,
        };
        println!("[{:>5.1}s] {line}", t0.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("k8s_blue_green").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_use_a_weighted_router_in_the_default_namespace() {
        let args = parse(&[]).unwrap();
        assert_eq!(args.router, RouterChoice::Gateway);
        assert_eq!(args.namespace, "default");
        assert_eq!(args.probe, ProbeChoice::Kubernetes);
        assert!(!args.dry_run);
        assert_eq!(args.scale_down_delay, Duration::from_secs(30));
    }

    #[test]
    fn router_and_namespace_are_chosen_by_flags() {
        let args = parse(&["--router", "nginx", "--namespace", "shop", "--dry-run"]).unwrap();
        assert_eq!(args.router, RouterChoice::Nginx);
        assert_eq!(args.namespace, "shop");
        assert!(args.dry_run);
        assert!(parse(&["--router", "istio"]).is_err());
    }

    #[test]
    fn writes_only_needs_dry_run() {
        assert!(parse(&["--writes-only"]).is_err());
        assert!(parse(&["--dry-run", "--writes-only"]).unwrap().writes_only);
    }

    #[test]
    fn a_service_selector_rollout_has_one_step() {
        let args = parse(&["--router", "service", "--dry-run"]).unwrap();
        let svc = ServiceName::new("shop").unwrap();
        let r = rollout(&args, &svc, "v2", "registry.example/shop:v2");
        let Strategy::BlueGreen(s) = r.strategy else {
            panic!("blue-green expected");
        };
        assert_eq!(s.traffic_steps, vec![Weight::FULL]);
        let gateway = parse(&["--dry-run"]).unwrap();
        let Strategy::BlueGreen(s) = rollout(&gateway, &svc, "v2", "i").strategy else {
            panic!("blue-green expected");
        };
        assert_eq!(s.traffic_steps.len(), 5);
    }
}
