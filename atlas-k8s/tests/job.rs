//! `MigrationJobRunner` and `MigrationJobHook` against a scripted API
//! server (kube-rs's `tower_test` pattern): every request's method, path,
//! query and body is asserted, and the watch is scripted event by event.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use atlas_core::testing::{MemoryStateStore, MockWorkloads, RecordingRouter, ScriptedProbe};
use atlas_core::{
    BlueGreen, Engine, ErrorKind, Outcome, Release, Rollout, ServiceName, Slot, Strategy,
    TrafficRouter, TrafficSplit, Workloads,
};
use atlas_k8s::job::{INSTANTIATE_ANNOTATION, job_from_cronjob, job_name};
use atlas_k8s::{MigrationJobHook, MigrationJobRunner};
use http::{Method, Request, Response};
use k8s_openapi::api::batch::v1::CronJob;
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use tower_test::mock;

mod scripted;

use scripted::{Exchange, ex, scripted};

const NS: &str = "shop";
const JOBS: &str = "/apis/batch/v1/namespaces/shop/jobs";

fn cronjob() -> Value {
    json!({
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": { "name": "migrate", "namespace": NS, "uid": "cj-uid-1" },
        "spec": {
            "schedule": "0 0 1 1 *",
            "suspend": true,
            "jobTemplate": {
                "metadata": { "labels": { "app": "checkout" }, "annotations": { "team": "payments" } },
                "spec": {
                    "backoffLimit": 0,
                    "template": { "spec": {
                        "restartPolicy": "Never",
                        "containers": [{ "name": "flyway", "image": "flyway/flyway:10", "args": ["migrate"] }]
                    }}
                }
            }
        }
    })
}

fn job(name: &str, version: &str, condition: Option<(&str, &str)>) -> Value {
    let mut job = json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": { "name": name, "namespace": NS, "resourceVersion": version },
        "spec": { "template": { "spec": { "containers": [{ "name": "flyway", "image": "flyway/flyway:10" }] } } },
        "status": { "active": 1 }
    });
    if let Some((kind, reason)) = condition {
        job["status"] = json!({ "conditions": [{
            "type": kind, "status": "True", "reason": reason, "message": format!("job {reason}")
        }]});
    }
    job
}

fn not_found(what: &str) -> String {
    json!({ "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
            "message": format!("{what} not found"), "code": 404 })
    .to_string()
}

fn events(events: &[(&str, Value)]) -> String {
    events
        .iter()
        .map(|(kind, object)| json!({ "type": kind, "object": object }).to_string() + "\n")
        .collect()
}

fn pods_and_logs(job: &str, log: &str) -> Vec<Exchange> {
    vec![
        ex(Method::GET, "/api/v1/namespaces/shop/pods", 200, json!({
            "apiVersion": "v1", "kind": "PodList", "metadata": {},
            "items": [
                { "metadata": { "name": format!("{job}-old"), "creationTimestamp": "2026-01-01T00:00:00Z" } },
                { "metadata": { "name": format!("{job}-new"), "creationTimestamp": "2026-01-01T00:05:00Z" } }
            ]
        }).to_string())
        .query(&[&format!("labelSelector=job-name%3D{job}")]),
        ex(Method::GET, &format!("/api/v1/namespaces/shop/pods/{job}-new/log"), 200, log.to_owned())
            .query(&["tailLines=50"]),
    ]
}

/// The whole happy path: no Job yet, the CronJob read, the Job created as
/// kubectl would, watched until Complete, the newest pod's log fetched.
#[tokio::test]
async fn a_run_creates_the_job_from_the_cronjob_and_waits_for_it_through_a_watch() {
    let name = job_name("migrate", "checkout/r1/before_deploy");
    let mut script = vec![
        ex(
            Method::GET,
            &format!("{JOBS}/{name}"),
            404,
            not_found("job"),
        ),
        ex(
            Method::GET,
            "/apis/batch/v1/namespaces/shop/cronjobs/migrate",
            200,
            cronjob().to_string(),
        ),
        {
            let name = name.clone();
            ex(Method::POST, JOBS, 201, job(&name, "10", None).to_string()).body(move |b| {
                assert_eq!(b["metadata"]["name"], name.as_str());
                assert_eq!(
                    b["metadata"]["annotations"][INSTANTIATE_ANNOTATION],
                    "manual"
                );
                assert_eq!(b["metadata"]["annotations"]["team"], "payments");
                assert_eq!(b["metadata"]["labels"]["app"], "checkout");
                let owner = &b["metadata"]["ownerReferences"][0];
                assert_eq!(owner["kind"], "CronJob");
                assert_eq!(owner["uid"], "cj-uid-1");
                assert_eq!(owner["controller"], true);
                assert_eq!(b["spec"]["backoffLimit"], 0);
                assert_eq!(
                    b["spec"]["template"]["spec"]["containers"][0]["args"][0],
                    "migrate"
                );
            })
        },
        ex(
            Method::GET,
            JOBS,
            200,
            events(&[
                ("MODIFIED", job(&name, "11", None)),
                (
                    "MODIFIED",
                    job(&name, "12", Some(("Complete", "Completed"))),
                ),
            ]),
        )
        .query(&[
            "watch=true",
            "resourceVersion=10",
            &format!("fieldSelector=metadata.name%3D{name}"),
        ]),
    ];
    script.extend(pods_and_logs(&name, "V3 applied\nV4 applied\n"));
    let (client, server, seen) = scripted(script);
    let runner = MigrationJobRunner::new(client, NS, "migrate").unwrap();
    let run = runner.run("checkout/r1/before_deploy").await.unwrap();
    assert_eq!(run.job, name);
    assert!(run.created);
    assert_eq!(run.logs, "V3 applied\nV4 applied\n");
    server.await.unwrap();
    assert_eq!(seen.lock().unwrap().len(), 6);
}

/// A failed Job is a typed error carrying the reason and the log lines.
#[tokio::test]
async fn a_failed_job_is_an_error_with_its_reason_and_log() {
    let name = job_name("migrate", "k");
    let mut script = vec![
        ex(
            Method::GET,
            &format!("{JOBS}/{name}"),
            404,
            not_found("job"),
        ),
        ex(
            Method::GET,
            "/apis/batch/v1/namespaces/shop/cronjobs/migrate",
            200,
            cronjob().to_string(),
        ),
        ex(Method::POST, JOBS, 201, job(&name, "10", None).to_string()),
        ex(
            Method::GET,
            JOBS,
            200,
            events(&[(
                "MODIFIED",
                job(&name, "11", Some(("Failed", "BackoffLimitExceeded"))),
            )]),
        )
        .query(&["watch=true"]),
    ];
    script.extend(pods_and_logs(
        &name,
        "ERROR: relation \"accounts\" already exists\n",
    ));
    let (client, server, _) = scripted(script);
    let err = MigrationJobRunner::new(client, NS, "migrate")
        .unwrap()
        .run("k")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Backend);
    let text = err.to_string();
    assert!(text.contains("BackoffLimitExceeded"), "{text}");
    assert!(
        text.contains("relation \"accounts\" already exists"),
        "{text}"
    );
    assert!(text.contains(&format!("shop/{name}")), "{text}");
    server.await.unwrap();
}

/// A second call with the same key (a resumed engine) finds the Job and
/// creates nothing: the CronJob is not even read.
#[tokio::test]
async fn a_repeated_run_finds_the_finished_job_and_creates_nothing() {
    let name = job_name("migrate", "k");
    let mut script = vec![ex(
        Method::GET,
        &format!("{JOBS}/{name}"),
        200,
        job(&name, "12", Some(("Complete", "Completed"))).to_string(),
    )];
    script.extend(pods_and_logs(&name, "done\n"));
    let (client, server, seen) = scripted(script);
    let run = MigrationJobRunner::new(client, NS, "migrate")
        .unwrap()
        .run("k")
        .await
        .unwrap();
    assert!(!run.created);
    server.await.unwrap();
    assert!(seen.lock().unwrap().iter().all(|l| !l.starts_with("POST")));
}

/// A watch the server ends (a 410 Gone error event) is resumed from a fresh
/// read of the Job.
#[tokio::test]
async fn a_watch_that_ends_is_resumed_from_a_fresh_read() {
    let name = job_name("migrate", "k");
    let gone = json!({ "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Expired", "message": "too old resource version", "code": 410 });
    let mut script = vec![
        ex(
            Method::GET,
            &format!("{JOBS}/{name}"),
            200,
            job(&name, "10", None).to_string(),
        ),
        ex(Method::GET, JOBS, 200, events(&[("ERROR", gone)])).query(&["resourceVersion=10"]),
        ex(
            Method::GET,
            &format!("{JOBS}/{name}"),
            200,
            job(&name, "20", None).to_string(),
        ),
        ex(
            Method::GET,
            JOBS,
            200,
            events(&[(
                "MODIFIED",
                job(&name, "21", Some(("Complete", "Completed"))),
            )]),
        )
        .query(&["resourceVersion=20"]),
    ];
    script.extend(pods_and_logs(&name, ""));
    let (client, server, _) = scripted(script);
    MigrationJobRunner::new(client, NS, "migrate")
        .unwrap()
        .run("k")
        .await
        .unwrap();
    server.await.unwrap();
}

/// A Job that never finishes fails the run at the runner's timeout.
#[tokio::test(start_paused = true)]
async fn a_job_that_never_finishes_fails_at_the_timeout() {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let runner = MigrationJobRunner::new(Client::new(service, NS), NS, "migrate")
        .unwrap()
        .with_timeout(Duration::from_secs(600));
    let name = job_name("migrate", "k");
    let server = tokio::spawn(async move {
        let mut handle = std::pin::pin!(handle);
        let (_, send) = handle.next_request().await.unwrap();
        send.send_response(Response::new(Body::from(
            job(&name, "10", None).to_string().into_bytes(),
        )));
        // The watch is opened and never answered: the Job runs forever.
        let (request, _send) = handle.next_request().await.unwrap();
        assert!(
            request
                .uri()
                .query()
                .unwrap_or_default()
                .contains("watch=true")
        );
        std::future::pending::<()>().await;
    });
    let err = runner.run("k").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Deadline, "{err}");
    server.abort();
}

/// A missing CronJob is NotFound, naming it.
#[tokio::test]
async fn a_missing_cronjob_is_not_found() {
    let name = job_name("migrate", "k");
    let (client, server, _) = scripted(vec![
        ex(
            Method::GET,
            &format!("{JOBS}/{name}"),
            404,
            not_found("job"),
        ),
        ex(
            Method::GET,
            "/apis/batch/v1/namespaces/shop/cronjobs/migrate",
            404,
            not_found("cronjob"),
        ),
    ]);
    let err = MigrationJobRunner::new(client, NS, "migrate")
        .unwrap()
        .run("k")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(err.to_string().contains("CronJob shop/migrate"), "{err}");
    server.await.unwrap();
}

#[tokio::test]
async fn names_are_checked_and_job_names_fit_kubernetes() {
    let client = || Client::new(mock::pair::<Request<Body>, Response<Body>>().0, NS);
    for bad in ["", "Migrate", "-x", "x-", "a_b", &"x".repeat(64)] {
        let err = MigrationJobRunner::new(client(), NS, bad).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{bad:?}");
    }
    let long = "m".repeat(63);
    let runner = MigrationJobRunner::new(client(), NS, &long).unwrap();
    let name = runner.job_name("key");
    assert!(name.len() <= 63, "{name}");
    assert_eq!(name, job_name(&long, "key"));
    assert_ne!(job_name("m", "a"), job_name("m", "b"));
    assert_eq!(job_name("m", "a"), job_name("m", "a"));
}

#[test]
fn a_cronjob_without_a_uid_or_template_is_refused() {
    let mut no_uid: CronJob = serde_json::from_value(cronjob()).unwrap();
    no_uid.metadata.uid = None;
    assert_eq!(
        job_from_cronjob(&no_uid, "j").unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    let mut no_spec: CronJob = serde_json::from_value(cronjob()).unwrap();
    no_spec.spec = None;
    assert_eq!(
        job_from_cronjob(&no_spec, "j").unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
}

/// On a real engine run (mock adapters): the expand Job runs before the new
/// slot is deployed, the contract Job after the old slot is gone, and a
/// failing expand Job rolls the rollout back before anything is deployed.
#[tokio::test(start_paused = true)]
async fn the_hook_runs_expand_before_deploy_and_contract_after_scale_down() {
    let svc = ServiceName::new("checkout").unwrap();
    let workloads = MockWorkloads::new();
    let router = RecordingRouter::new();
    workloads
        .deploy(&svc, Slot::Blue, &Release::new("v1", "checkout:v1"), 1)
        .await
        .unwrap();
    router
        .set_split(&svc, &TrafficSplit::all_to(Slot::Blue))
        .await
        .unwrap();

    // Both runners share one scripted server; each finds its Job complete.
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, NS);
    let expand = MigrationJobRunner::new(client.clone(), NS, "expand").unwrap();
    let contract = MigrationJobRunner::new(client, NS, "contract").unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let seen = order.clone();
    let w = workloads.clone();
    let s = svc.clone();
    let server = tokio::spawn(async move {
        let mut handle = std::pin::pin!(handle);
        while let Some((request, send)) = handle.next_request().await {
            let path = request.uri().path().to_owned();
            let answer = if let Some(job) = path.strip_prefix(&format!("{JOBS}/")) {
                let green = w.replicas(&s, Slot::Green);
                let blue = w.replicas(&s, Slot::Blue);
                seen.lock()
                    .unwrap()
                    .push((job.split('-').next().unwrap().to_owned(), green, blue));
                job_json(job)
            } else {
                json!({ "apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [] })
                    .to_string()
            };
            send.send_response(Response::new(Body::from(answer.into_bytes())));
        }
    });
    fn job_json(name: &str) -> String {
        job(name, "5", Some(("Complete", "Completed"))).to_string()
    }
    let engine = Engine::builder()
        .workloads(Arc::new(workloads.clone()))
        .router(Arc::new(router.clone()))
        .probe(Arc::new(ScriptedProbe::new()))
        .store(Arc::new(MemoryStateStore::new()))
        .hook(Arc::new(
            MigrationJobHook::new().expand(expand).contract(contract),
        ))
        .build()
        .unwrap();
    let rollout = Rollout::new(
        svc.clone(),
        Release::new("v2", "checkout:v2"),
        Strategy::BlueGreen(BlueGreen::new(1)),
    );
    let outcome = engine.start(rollout).await.unwrap().wait().await.unwrap();
    assert_eq!(
        outcome,
        Outcome::Promoted {
            version: "v2".into()
        }
    );
    assert_eq!(
        order.lock().unwrap().clone(),
        [("expand".to_owned(), 0, 1), ("contract".to_owned(), 1, 0)],
        "expand before green existed, contract after blue was gone"
    );
    server.abort();
}
