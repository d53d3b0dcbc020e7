//! The [`PolicyGate`]: any policy check — the Kubernetes pod security
//! checker, an OPA query, a licence scan — behind one small trait, so this
//! crate needs none of them.
//!
//! ```
//! use atlas_gates::{PolicyGate, QualityGates};
//! let gate = PolicyGate::from_fn("no-latest-tag", |ctx| {
//!     let version = ctx.version.clone();
//!     async move {
//!         Ok(if version == "latest" { vec!["the version must be pinned".to_string()] } else { vec![] })
//!     }
//! });
//! let gates = QualityGates::new().gate(gate);
//! # let _ = gates;
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;

use crate::error::{Error, Result};
use crate::gate::{Gate, GateContext, Verdict};

/// One policy: the violations of a release, empty when it complies.
#[async_trait]
pub trait PolicyCheck: Send + Sync {
    /// The violations, one line each.
    ///
    /// # Errors
    /// When the check cannot run; the gate reports it as an error.
    async fn violations(&self, ctx: &GateContext) -> atlas_core::Result<Vec<String>>;
}

type CheckFn = dyn Fn(&GateContext) -> Pin<Box<dyn Future<Output = atlas_core::Result<Vec<String>>> + Send>>
    + Send
    + Sync;

struct FnCheck(Arc<CheckFn>);

#[async_trait]
impl PolicyCheck for FnCheck {
    async fn violations(&self, ctx: &GateContext) -> atlas_core::Result<Vec<String>> {
        (self.0)(ctx).await
    }
}

/// Passes when its check finds no violation.
#[derive(Clone)]
pub struct PolicyGate {
    name: String,
    check: Arc<dyn PolicyCheck>,
}

impl fmt::Debug for PolicyGate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyGate")
            .field("name", &self.name)
            .finish()
    }
}

impl PolicyGate {
    /// A gate named `name` over `check`.
    pub fn new(name: impl Into<String>, check: impl PolicyCheck + 'static) -> Self {
        PolicyGate {
            name: name.into(),
            check: Arc::new(check),
        }
    }

    /// A gate from an async closure returning the violations.
    pub fn from_fn<F, Fut>(name: impl Into<String>, check: F) -> Self
    where
        F: Fn(&GateContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = atlas_core::Result<Vec<String>>> + Send + 'static,
    {
        let f: Arc<CheckFn> = Arc::new(move |ctx| Box::pin(check(ctx)));
        Self::new(name, FnCheck(f))
    }
}

#[async_trait]
impl Gate for PolicyGate {
    fn name(&self) -> &str {
        &self.name
    }

    async fn evaluate(&self, ctx: &GateContext) -> Result<Verdict> {
        let violations = self
            .check
            .violations(ctx)
            .await
            .map_err(|source| Error::Source {
                what: format!("policy check {}", self.name),
                source,
            })?;
        Ok(if violations.is_empty() {
            Verdict::pass("complies")
        } else {
            Verdict::fail(format!("{} violations", violations.len()), violations)
        })
    }
}
