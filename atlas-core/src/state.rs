//! [`StateStore`]: where a rollout's progress is persisted, so a crashed
//! controller resumes and two controllers never drive one service.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::domain::{ServiceName, Slot, Weight};
use crate::error::{Error, Result};
use crate::rollout::Rollout;
use crate::strategy::Step;

/// Where a rollout stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Executing steps.
    Progressing,
    /// Returning all traffic to the old stable slot and scaling the new one
    /// down, because of `reason`.
    RollingBack {
        /// Why.
        reason: String,
    },
    /// Finished: the new release is stable and has all traffic.
    Promoted,
    /// Finished: the old release kept (or got back) all traffic.
    RolledBack {
        /// Why.
        reason: String,
    },
}

impl Phase {
    /// Whether the rollout has finished.
    pub fn is_terminal(&self) -> bool {
        matches!(self, Phase::Promoted | Phase::RolledBack { .. })
    }
}

/// The persisted state of one rollout. The engine writes it after every step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutState {
    /// Unique id of this rollout.
    pub id: String,
    /// The whole rollout, so a resumed engine needs nothing else.
    pub rollout: Rollout,
    /// The slot that was stable when the rollout began.
    pub stable: Slot,
    /// The version the stable slot ran, if any.
    pub stable_version: Option<String>,
    /// True when the stable slot ran nothing (first deployment).
    pub initial: bool,
    /// Where it stands.
    pub phase: Phase,
    /// Index of the step being executed (steps before it are done).
    pub step: usize,
    /// The canary weight last applied.
    pub weight: Weight,
    /// Paused by a human or an inconclusive analysis.
    pub paused: bool,
    /// A promote arrived outside a pause: skip the next pause.
    pub skip_next_pause: bool,
    /// A full promotion was asked for: pauses, analyses and intermediate
    /// traffic steps are skipped.
    pub full_promotion: bool,
    /// All traffic moved to the new slot ([`Step::Promote`] done):
    /// from here on the rollout can only finish promoted.
    pub promoted: bool,
    /// The fingerprint of the step plan the rollout was started with, which
    /// [`step`](Self::step) indexes. An engine that resumes the rollout
    /// compiles the plan again and refuses to go on when the fingerprints
    /// differ (a build whose strategies compile other steps would give the
    /// stored index another meaning).
    ///
    /// `None` in states written by builds that did not store it: there is
    /// nothing to compare, so a resuming engine accepts the plan it compiles
    /// and stores that plan's fingerprint with its next write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<PlanFingerprint>,
}

impl RolloutState {
    /// The canary (new) slot.
    pub fn canary(&self) -> Slot {
        self.stable.other()
    }
}

/// A stable hash of a compiled step plan: 64-bit FNV-1a over the plan's
/// JSON serialisation, written `fnv1a64:` and 16 hex digits.
///
/// The same steps give the same fingerprint in every build and on every
/// platform (the serialisation is the persisted format of [`Step`], and
/// FNV-1a has no seed), so it can be stored with a rollout and compared
/// when another engine resumes it. It detects accidental change, not
/// tampering: it is no cryptographic hash.
///
/// ```
/// use std::time::Duration;
/// use atlas_core::{PlanFingerprint, Step, Weight};
///
/// let plan = [Step::SetWeight(Weight::new(20)?), Step::Pause(Some(Duration::from_secs(60)))];
/// let fp = PlanFingerprint::of(&plan)?;
/// assert_eq!(fp, PlanFingerprint::of(&plan)?);
/// assert_ne!(fp, PlanFingerprint::of(&plan[..1])?);
/// assert!(fp.as_str().starts_with("fnv1a64:"));
/// # Ok::<(), atlas_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PlanFingerprint(String);

impl PlanFingerprint {
    /// The fingerprint of `steps`.
    ///
    /// # Errors
    /// [`Error::Backend`] if the steps cannot be serialised, which the
    /// step types never cause.
    pub fn of(steps: &[Step]) -> Result<Self> {
        let mut hash = Fnv1a64::new();
        serde_json::to_writer(&mut hash, steps)
            .map_err(|e| Error::backend_with("engine", "could not serialise the step plan", e))?;
        Ok(PlanFingerprint(format!("fnv1a64:{:016x}", hash.0)))
    }

    /// The fingerprint as text, e.g. `fnv1a64:6c62272e07bb0142`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PlanFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// 64-bit FNV-1a, fed as an [`io::Write`] so a serialisation streams into
/// it without a buffer.
struct Fnv1a64(u64);

impl Fnv1a64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    fn new() -> Self {
        Fnv1a64(Self::OFFSET)
    }
}

impl io::Write for Fnv1a64 {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for b in buf {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(Self::PRIME);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A state value with the version a compare-and-swap must name.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<T> {
    /// Version, increased by every successful write.
    pub version: u64,
    /// The value.
    pub value: T,
}

/// Proof of holding the lease on a service; only its holder may drive the
/// service's rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The service.
    pub service: ServiceName,
    /// Who holds it (an engine's id).
    pub holder: String,
    /// Distinguishes this grant from earlier ones to the same holder.
    pub token: u64,
    /// How long the lease lasts without renewal. Stores that tie the lease
    /// to a process (an OS file lock) may ignore it.
    pub ttl: Duration,
}

/// Persists rollout state with compare-and-swap, and grants leases.
#[async_trait]
pub trait StateStore: Send + Sync {
    /// The state of `service`'s rollout, or `None` if it never had one.
    async fn load(&self, service: &ServiceName) -> Result<Option<Versioned<RolloutState>>>;

    /// Writes `state` if the stored version is `expected` (`None`: nothing
    /// stored yet). Returns the new version. A stale `expected` is a
    /// [`Conflict`](crate::Error::Conflict).
    async fn compare_and_swap(
        &self,
        service: &ServiceName,
        expected: Option<u64>,
        state: &RolloutState,
    ) -> Result<u64>;

    /// Grants `holder` the lease on `service` for `ttl`, or fails with a
    /// [`Conflict`](crate::Error::Conflict) naming the current holder while
    /// another holder's lease is live.
    async fn acquire_lease(
        &self,
        service: &ServiceName,
        holder: &str,
        ttl: Duration,
    ) -> Result<Lease>;

    /// Extends `lease` by its ttl; a [`Conflict`](crate::Error::Conflict)
    /// if it expired and someone else took it.
    async fn renew_lease(&self, lease: &Lease) -> Result<()>;

    /// Gives `lease` up. Releasing a lease no longer held is not an error.
    async fn release_lease(&self, lease: &Lease) -> Result<()>;
}

/// Forwards the trait through a smart pointer, so `Arc<dyn StateStore>` and
/// `Box<dyn StateStore>` are StateStores too.
macro_rules! forward_statestore {
    ($($ptr:ident),*) => {$(
        #[async_trait]
        impl<T: StateStore + ?Sized> StateStore for $ptr<T> {
            async fn load(&self, service: &ServiceName) -> Result<Option<Versioned<RolloutState>>> {
                (**self).load(service).await
            }
            async fn compare_and_swap(
                &self,
                service: &ServiceName,
                expected: Option<u64>,
                state: &RolloutState,
            ) -> Result<u64> {
                (**self).compare_and_swap(service, expected, state).await
            }
            async fn acquire_lease(
                &self,
                service: &ServiceName,
                holder: &str,
                ttl: Duration,
            ) -> Result<Lease> {
                (**self).acquire_lease(service, holder, ttl).await
            }
            async fn renew_lease(&self, lease: &Lease) -> Result<()> {
                (**self).renew_lease(lease).await
            }
            async fn release_lease(&self, lease: &Lease) -> Result<()> {
                (**self).release_lease(lease).await
            }
        }
    )*};
}

forward_statestore!(Arc, Box);

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        // From the FNV reference test suite.
        for (input, want) in [
            (&b""[..], 0xcbf2_9ce4_8422_2325_u64),
            (b"a", 0xaf63_dc4c_8601_ec8c),
            (b"foobar", 0x8594_4171_f739_67e8),
        ] {
            let mut h = Fnv1a64::new();
            h.write_all(input).unwrap();
            assert_eq!(h.0, want, "{input:?}");
        }
    }

    #[test]
    fn fingerprints_are_stable_across_builds() {
        // A stored fingerprint must match what any later build computes for
        // the same plan: pin one value.
        let plan = [
            Step::Deploy { replicas: 2 },
            Step::AwaitHealthy,
            Step::SetWeight(crate::Weight::FULL),
            Step::Promote,
            Step::ScaleDownOld {
                delay: Duration::from_secs(30),
            },
        ];
        let json = serde_json::to_string(&plan[..]).unwrap();
        let mut h = Fnv1a64::new();
        h.write_all(json.as_bytes()).unwrap();
        let fp = PlanFingerprint::of(&plan).unwrap();
        assert_eq!(fp.as_str(), format!("fnv1a64:{:016x}", h.0));
        assert_eq!(fp.as_str(), PINNED_FINGERPRINT, "{json}");
    }

    const PINNED_FINGERPRINT: &str = "fnv1a64:0d023596bd58fbb1";

    #[test]
    fn states_written_without_a_fingerprint_still_load() {
        let rollout = Rollout::new(
            crate::ServiceName::new("checkout").unwrap(),
            crate::Release::new("v2", "checkout:v2"),
            crate::Strategy::BlueGreen(crate::BlueGreen::new(2)),
        );
        let plan = PlanFingerprint::of(&rollout.strategy.compile(false)).unwrap();
        let mut state = RolloutState {
            id: "checkout-1".into(),
            rollout,
            stable: Slot::Blue,
            stable_version: Some("v1".into()),
            initial: false,
            phase: Phase::Progressing,
            step: 3,
            weight: Weight::ZERO,
            paused: false,
            skip_next_pause: false,
            full_promotion: false,
            promoted: false,
            plan: Some(plan.clone()),
        };
        let mut json = serde_json::to_value(&state).unwrap();
        assert_eq!(json["plan"], plan.as_str());
        // What an older build wrote: no `plan` at all.
        json.as_object_mut().unwrap().remove("plan");
        let old: RolloutState = serde_json::from_value(json).unwrap();
        state.plan = None;
        assert_eq!(old, state);
        // And a state without one is written without one.
        assert!(serde_json::to_value(&old).unwrap().get("plan").is_none());
    }
}
