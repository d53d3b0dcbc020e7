//! Rollout hooks: work that must happen at fixed points of a rollout, such
//! as schema migrations in the expand / contract pattern.
//!
//! A [`RolloutHook`] is called by the [`Engine`](crate::Engine) at two
//! points, in the order hooks were added to the builder:
//!
//! - [`HookPoint::BeforeDeploy`] — inside the first `deploy` step, before
//!   the new release's slot is started. No traffic has moved yet; a hook
//!   that fails there rolls the rollout back (there is nothing to undo but
//!   the canary slot, which was never started).
//! - [`HookPoint::AfterScaleDown`] — inside the `scale down old slot` step,
//!   once the old slot has been drained and scaled to zero, so no replica of
//!   the previous version runs any more. The rollout is already promoted
//!   there and cannot roll back: a failing hook stops the engine with an
//!   error, the state stays in the store, and a resumed engine runs the
//!   step (and the hook) again.
//!
//! Because a crash can interrupt a step and a resumed engine re-runs it,
//! hooks must be idempotent. The migration hook of the `atlas-migrate`
//! crate is: applying already-applied migrations is a no-op.
//!
//! ```
//! use std::sync::Arc;
//! use async_trait::async_trait;
//! use atlas_core::hooks::{HookContext, RolloutHook};
//!
//! #[derive(Debug)]
//! struct Announce;
//!
//! #[async_trait]
//! impl RolloutHook for Announce {
//!     fn name(&self) -> &str {
//!         "announce"
//!     }
//!     async fn before_deploy(&self, ctx: &HookContext) -> atlas_core::Result<()> {
//!         println!("{} is about to start {}", ctx.service, ctx.version);
//!         Ok(())
//!     }
//! }
//! let hook: Arc<dyn RolloutHook> = Arc::new(Announce);
//! # let _ = hook;
//! ```

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::domain::{ServiceName, Slot};
use crate::error::Result;

/// Where in a rollout a hook runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookPoint {
    /// Before the new release's slot is started.
    BeforeDeploy,
    /// After the old release's slot has been drained and scaled to zero.
    AfterScaleDown,
}

impl fmt::Display for HookPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HookPoint::BeforeDeploy => "before_deploy",
            HookPoint::AfterScaleDown => "after_scale_down",
        })
    }
}

/// What a hook is told about the rollout it runs in.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HookContext {
    /// The service being rolled out.
    pub service: ServiceName,
    /// The rollout's id.
    pub rollout_id: String,
    /// Where the hook runs.
    pub point: HookPoint,
    /// The version being rolled out.
    pub version: String,
    /// The version being replaced; `None` on a first rollout.
    pub stable_version: Option<String>,
    /// The slot the new version runs in.
    pub new_slot: Slot,
    /// The slot the old version ran in.
    pub old_slot: Slot,
}

/// Work run at fixed points of every rollout of an engine. See the
/// [module docs](self) for when each method runs and what a failure does.
///
/// Both methods default to doing nothing. Implementations must be
/// idempotent: a resumed engine may call a method again for the same
/// rollout.
#[async_trait]
pub trait RolloutHook: Send + Sync + fmt::Debug {
    /// A short name for events and logs, e.g. `migrations`.
    fn name(&self) -> &str;

    /// Runs before the new release's slot is started.
    ///
    /// # Errors
    /// Any error rolls the rollout back before a replica of the new
    /// version has started.
    async fn before_deploy(&self, ctx: &HookContext) -> Result<()> {
        let _ = ctx;
        Ok(())
    }

    /// Runs once no replica of the old release is left.
    ///
    /// # Errors
    /// Any error stops the engine (the rollout is already promoted); a
    /// resumed engine calls the hook again.
    async fn after_scale_down(&self, ctx: &HookContext) -> Result<()> {
        let _ = ctx;
        Ok(())
    }
}

/// Forwards the trait through a smart pointer, so `Arc<dyn RolloutHook>`
/// and `Box<dyn RolloutHook>` are hooks too.
macro_rules! forward_rollout_hook {
    ($($ptr:ident),*) => {$(
        #[async_trait]
        impl<T: RolloutHook + ?Sized> RolloutHook for $ptr<T> {
            fn name(&self) -> &str {
                (**self).name()
            }
            async fn before_deploy(&self, ctx: &HookContext) -> Result<()> {
                (**self).before_deploy(ctx).await
            }
            async fn after_scale_down(&self, ctx: &HookContext) -> Result<()> {
                (**self).after_scale_down(ctx).await
            }
        }
    )*};
}

forward_rollout_hook!(Arc, Box);
