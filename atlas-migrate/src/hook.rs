//! The expand / contract pattern as a [`RolloutHook`].

use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::{MigrationDriver, MigrationPhase, Migrator, RunReport};
use atlas_core::Result;
use atlas_core::hooks::{HookContext, HookPoint, RolloutHook};

/// Applies a [`Migrator`]'s migrations around every rollout of an engine:
/// the **expand** migrations (everything pending up to the first pending
/// contract migration) before the new release's slot starts, and the
/// **contract** migrations (everything still pending) only once the old
/// release's slot has been drained and scaled to zero.
///
/// A failing expand migration rolls the rollout back before any replica of
/// the new version started (the migration itself was rolled back by the
/// migrator). A failing contract migration stops the engine with the new
/// version fully promoted, which is safe: the schema is still the expanded
/// one the new version was started against; a resumed engine retries it.
///
/// Applying the migrations again is a no-op, so a resumed engine may call
/// the hook twice.
///
/// ```no_run
/// # async fn demo(migrator: atlas_migrate::Migrator<atlas_core::testing::MemoryDriver>,
/// #               builder: atlas_core::EngineBuilder) -> atlas_core::Result<()> {
/// use std::sync::Arc;
/// use atlas_migrate::MigrationHook;
///
/// let hook = Arc::new(MigrationHook::new(Arc::new(migrator)));
/// let engine = builder.hook(hook.clone()).build()?;
/// // ... engine.start(rollout).await?.wait().await? ...
/// for report in hook.reports() {
///     println!("{:?}: {:?}", report.0, report.1.versions);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct MigrationHook<D> {
    migrator: Arc<Migrator<D>>,
    reports: Mutex<Vec<(HookPoint, RunReport)>>,
}

impl<D: MigrationDriver> MigrationHook<D> {
    /// A hook applying `migrator`'s migrations.
    pub fn new(migrator: Arc<Migrator<D>>) -> Self {
        MigrationHook {
            migrator,
            reports: Mutex::new(Vec::new()),
        }
    }

    /// The migrator.
    pub fn migrator(&self) -> &Arc<Migrator<D>> {
        &self.migrator
    }

    /// What each call applied, oldest first.
    pub fn reports(&self) -> Vec<(HookPoint, RunReport)> {
        self.reports
            .lock()
            .map(|r| r.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    async fn apply(&self, ctx: &HookContext, phase: MigrationPhase) -> Result<()> {
        tracing::info!(
            service = %ctx.service,
            version = ctx.version,
            phase = phase.as_str(),
            "applying migrations"
        );
        let report = self.migrator.migrate_phase(phase).await?;
        tracing::info!(
            service = %ctx.service,
            phase = phase.as_str(),
            applied = ?report.versions,
            "migrations applied"
        );
        let mut reports = self
            .reports
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        reports.push((ctx.point, report));
        Ok(())
    }
}

#[async_trait]
impl<D: MigrationDriver + 'static> RolloutHook for MigrationHook<D> {
    fn name(&self) -> &str {
        "migrations"
    }

    async fn before_deploy(&self, ctx: &HookContext) -> Result<()> {
        self.apply(ctx, MigrationPhase::Expand).await
    }

    async fn after_scale_down(&self, ctx: &HookContext) -> Result<()> {
        self.apply(ctx, MigrationPhase::Contract).await
    }
}
