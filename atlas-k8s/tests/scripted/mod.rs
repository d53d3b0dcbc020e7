//! A scripted Kubernetes API server for request-shape tests (kube-rs's
//! `tower_test` pattern): each expected request's method, path, query and
//! body is asserted in order, and each gets the scripted answer.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use serde_json::Value;
use tower_test::mock;

/// A check on a request's JSON body.
pub(crate) type BodyCheck = Box<dyn Fn(&Value) + Send>;

/// One expected request and the answer to give.
pub(crate) struct Exchange {
    pub(crate) method: Method,
    pub(crate) path: String,
    /// `key=value` pairs the query must contain (URL-encoded as sent).
    pub(crate) query: Vec<String>,
    /// Checks on the JSON body, if any.
    pub(crate) body: Option<BodyCheck>,
    pub(crate) status: StatusCode,
    pub(crate) answer: String,
}

pub(crate) fn ex(method: Method, path: &str, status: u16, answer: String) -> Exchange {
    Exchange {
        method,
        path: path.to_owned(),
        query: Vec::new(),
        body: None,
        status: StatusCode::from_u16(status).unwrap(),
        answer,
    }
}

impl Exchange {
    pub(crate) fn query(mut self, pairs: &[&str]) -> Self {
        self.query = pairs.iter().map(|s| s.to_string()).collect();
        self
    }
    pub(crate) fn body(mut self, check: impl Fn(&Value) + Send + 'static) -> Self {
        self.body = Some(Box::new(check));
        self
    }
}

/// A client whose server plays `script` in order and records every
/// request line; the task fails the test on any unexpected request.
pub(crate) fn scripted(
    script: Vec<Exchange>,
) -> (Client, tokio::task::JoinHandle<()>, Arc<Mutex<Vec<String>>>) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let task = tokio::spawn(async move {
        let mut handle = std::pin::pin!(handle);
        for step in script {
            let (request, send) = handle.next_request().await.expect("a request");
            let uri = request.uri().clone();
            log.lock()
                .unwrap()
                .push(format!("{} {}", request.method(), uri));
            assert_eq!(request.method(), step.method, "{uri}");
            assert_eq!(uri.path(), step.path, "{uri}");
            let query = uri.query().unwrap_or_default().to_owned();
            for pair in &step.query {
                assert!(
                    query.split('&').any(|p| p == pair),
                    "{uri}: query lacks {pair}"
                );
            }
            if let Some(check) = step.body {
                let bytes = request.into_body().collect_bytes().await.unwrap();
                let value: Value = serde_json::from_slice(&bytes).unwrap();
                check(&value);
            }
            let response = Response::builder()
                .status(step.status)
                .body(Body::from(step.answer.into_bytes()))
                .unwrap();
            send.send_response(response);
        }
    });
    (Client::new(service, "default"), task, seen)
}
