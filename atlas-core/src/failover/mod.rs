//! Multi-region failover: a [`FailoverPolicy`] of triggers, the pure
//! [`redistribute`] function that shares traffic among healthy regions, and
//! the [`FailoverController`] that checks regions, decides, moves traffic
//! through a [`RegionRouter`](crate::region::RegionRouter), switches the
//! database through a [`DatabaseFailover`](crate::database::DatabaseFailover)
//! and persists every step in a [`FailoverStore`].
//!
//! # What the controller does
//!
//! Every [`interval`](FailoverPolicy::interval) it checks each region — its
//! endpoints through a [`HealthProbe`](crate::HealthProbe), its
//! [`MetricTrigger`] queries through a
//! [`MetricProvider`](crate::MetricProvider) — and the primary database.
//! When a trigger fires for a region that serves traffic, it fails over:
//!
//! 1. **decides** the new weights with [`redistribute`] (the failed share
//!    goes to the healthy regions in proportion to their weights; standbys
//!    are activated when capacity is short) and writes them, with the
//!    change marked [in progress](FailoverState::in_progress), to the store
//!    — the write comes first, so a controller that crashes after it is
//!    resumed by the next one, which applies the same weights again;
//! 2. **moves traffic** in one
//!    [`set_region_weights`](crate::region::RegionRouter::set_region_weights)
//!    call;
//! 3. names an unfinished rollout of the service, if there is one, for its
//!    engine to abort (see below);
//! 4. when the failed region holds the primary database (or the database
//!    trigger fired): **fences** the old primary, records the fence,
//!    **promotes** the standby, records the promotion — a resumed
//!    controller skips what is recorded, and never promotes before a fence
//!    (if the database refuses the promotion for want of a fence because
//!    the adapter, restarted too, has forgotten the recorded one, it fences
//!    again, which the contract makes idempotent, and promotes);
//! 5. clears the in-progress mark.
//!
//! A failed action of the router or the database is reported
//! ([`FailoverEventKind::ActionFailed`]) and tried again at the next check;
//! a failed store write or a lost lease stops the controller (its state is
//! intact; start another). Every decision is a [`FailoverEvent`] and runs in
//! a `failover` tracing span; the events carry the durations from the
//! decision to traffic moved and to database writable, so the recovery
//! time is measured, not promised.
//!
//! A failed region counts as recovered after
//! [`recovery_checks`](FailoverPolicy::recovery_checks) healthy checks in a
//! row (hysteresis: one bad check starts over, so a flapping region neither
//! fails over nor back); then traffic returns per the [`Failback`] policy,
//! automatically after a healthy period or on
//! [`FailoverHandle::failback`]. The database is not switched back: the
//! old primary must be rebuilt as a standby first, outside the controller.
//!
//! Only one controller drives a service: it holds the
//! [`StateStore`](crate::StateStore) lease on `<service>-failover` (a
//! different lease from the rollout engine's, so a failover never waits for
//! a rollout), renewed every third of its time-to-live.
//!
//! # The rollout interlock
//!
//! A rollout and a failover of the same service never proceed together, and
//! the failover always wins (the recovery time comes first; it never waits
//! for a rollout):
//!
//! - **A rollout cannot start during a failover.** An engine built with
//!   [`EngineBuilder::failover_store`](crate::EngineBuilder::failover_store)
//!   reads the service's failover state before it starts a rollout;
//!   while a failover or failback is
//!   [in progress](FailoverState::in_progress), `Engine::start` fails fast
//!   with a [`Precondition`](crate::Error::Precondition) error naming it.
//! - **A failover aborts a running rollout.** When a change begins, the
//!   controller reads the rollout state from the same `StateStore` and, if
//!   a rollout is unfinished, records its id in
//!   [`abort_rollout`](FailoverState::abort_rollout). The engine reads the
//!   failover state before every step and every third of its lease
//!   time-to-live during a step or a pause; when a change is in progress or
//!   its rollout is named, it aborts the rollout: all traffic returns to the
//!   stable slot in one router call, and the rollout ends rolled back with
//!   the failover as its reason. A rollout already promoted (past its point
//!   of no return) finishes instead.
//!
//! Both go through the shared stores, so they hold across processes. The
//! controller writes the in-progress mark before it reads the rollout
//! state, and the engine writes its rollout state before it first checks,
//! so whichever comes second sees the other. Region weights and the
//! blue/green split are separate router calls, so the last step a rollout
//! takes before its check cannot undo a failover.

mod check;
mod controller;
mod events;
pub(crate) mod interlock;
mod policy;
mod store;
mod weights;

pub use controller::{FailoverController, FailoverControllerBuilder, FailoverHandle};
pub use events::{FailoverEvent, FailoverEventKind};
pub use policy::{
    Capacity, DatabaseTrigger, Failback, FailoverPolicy, HealthTrigger, MetricTrigger,
};
pub use store::{FailedRegion, FailoverState, FailoverStore, Transition, TransitionKind};
pub use weights::{Redistribution, redistribute};
