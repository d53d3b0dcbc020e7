//! [`PrimaryWatch`]: turns repeated checks of the primary into "lost for
//! longer than N seconds", the trigger of an unplanned failover.

use std::time::Duration;

use atlas_core::database::{DatabaseFailover, PrimaryHealth};
use atlas_core::{Error, Result};
use tokio::time::Instant;
use tracing::Instrument;

/// What the watch concluded from one more check.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PrimaryVerdict {
    /// The primary answered and takes writes.
    Up,
    /// The primary is down, not yet for longer than the watch's limit.
    Down {
        /// Since the first failed check of this outage.
        down_for: Duration,
        /// Failed checks in a row.
        failed_checks: u32,
    },
    /// The primary has been down for longer than the limit.
    Lost(PrimaryLoss),
}

/// A primary lost for longer than the watch's limit.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PrimaryLoss {
    /// Since the first failed check of this outage.
    pub down_for: Duration,
    /// Failed checks in a row.
    pub failed_checks: u32,
    /// The last check's error, when it gave one.
    pub last_error: Option<String>,
}

impl PrimaryLoss {
    /// A reason to record with the fence, such as `primary down for 31s (7
    /// failed checks): connection refused`.
    pub fn reason(&self) -> String {
        let mut out = format!(
            "primary down for {:.1}s ({} failed checks)",
            self.down_for.as_secs_f64(),
            self.failed_checks
        );
        if let Some(e) = &self.last_error {
            out.push_str(": ");
            out.push_str(e);
        }
        out
    }
}

/// Decides when the primary is lost: it is down (unreachable, or
/// answering but refusing writes, so the application cannot use it
/// either) in every check for longer than `lost_after` (the
/// specification's 30 s by default). One good check ends the outage.
///
/// Time comes from tokio's clock, so a paused clock drives it in tests.
///
/// ```
/// # use std::time::Duration;
/// # use atlas_core::database::PrimaryHealth;
/// use atlas_storage::postgres::failover::{PrimaryVerdict, PrimaryWatch};
/// # let down = PrimaryHealth { reachable: false, writable: false, latency: Duration::ZERO, error: None };
/// let mut watch = PrimaryWatch::new(Duration::from_secs(30)).unwrap();
/// let t0 = tokio::time::Instant::now();
/// assert!(matches!(watch.observe(&down, t0), PrimaryVerdict::Down { .. }));
/// let later = t0 + Duration::from_secs(31);
/// assert!(matches!(watch.observe(&down, later), PrimaryVerdict::Lost(_)));
/// ```
#[derive(Debug, Clone)]
pub struct PrimaryWatch {
    lost_after: Duration,
    down_since: Option<Instant>,
    failed_checks: u32,
}

impl Default for PrimaryWatch {
    /// Lost after 30 s.
    fn default() -> Self {
        PrimaryWatch {
            lost_after: Self::DEFAULT_LOST_AFTER,
            down_since: None,
            failed_checks: 0,
        }
    }
}

impl PrimaryWatch {
    /// The specification's limit: a primary down for more than 30 s is
    /// lost.
    pub const DEFAULT_LOST_AFTER: Duration = Duration::from_secs(30);

    /// A watch that declares the primary lost once it was down for longer
    /// than `lost_after`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] (field `lost_after`) for zero.
    pub fn new(lost_after: Duration) -> Result<Self> {
        if lost_after.is_zero() {
            return Err(Error::invalid("lost_after", "must be longer than zero"));
        }
        Ok(PrimaryWatch {
            lost_after,
            ..Self::default()
        })
    }

    /// The limit.
    pub fn lost_after(&self) -> Duration {
        self.lost_after
    }

    /// Takes one check made at `now`.
    pub fn observe(&mut self, health: &PrimaryHealth, now: Instant) -> PrimaryVerdict {
        if health.reachable && health.writable {
            if self.down_since.take().is_some() {
                tracing::info!(failed_checks = self.failed_checks, "primary is back");
            }
            self.failed_checks = 0;
            return PrimaryVerdict::Up;
        }
        let since = *self.down_since.get_or_insert(now);
        self.failed_checks = self.failed_checks.saturating_add(1);
        let down_for = now.saturating_duration_since(since);
        if down_for > self.lost_after {
            let loss = PrimaryLoss {
                down_for,
                failed_checks: self.failed_checks,
                last_error: health.error.clone().or_else(|| {
                    (health.reachable && !health.writable)
                        .then(|| "the primary refuses writes".to_owned())
                }),
            };
            tracing::warn!(
                down_for_ms = down_for.as_millis() as u64,
                failed_checks = self.failed_checks,
                lost_after_ms = self.lost_after.as_millis() as u64,
                "primary lost"
            );
            return PrimaryVerdict::Lost(loss);
        }
        tracing::debug!(
            down_for_ms = down_for.as_millis() as u64,
            failed_checks = self.failed_checks,
            error = health.error.as_deref().unwrap_or(""),
            "primary down"
        );
        PrimaryVerdict::Down {
            down_for,
            failed_checks: self.failed_checks,
        }
    }

    /// Checks `db`'s primary every `every` until it is lost, and returns
    /// the loss. A check that fails with an error counts as a failed check
    /// (its message is kept).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] (field `every`) for a zero period.
    pub async fn until_lost(
        &mut self,
        db: &dyn DatabaseFailover,
        every: Duration,
    ) -> Result<PrimaryLoss> {
        if every.is_zero() {
            return Err(Error::invalid("every", "must be longer than zero"));
        }
        let span = tracing::info_span!(
            "primary_watch",
            lost_after_ms = self.lost_after.as_millis() as u64,
            every_ms = every.as_millis() as u64
        );
        async {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let started = Instant::now();
                let health = match db.check_primary().await {
                    Ok(h) => h,
                    Err(e) => PrimaryHealth {
                        reachable: false,
                        writable: false,
                        latency: started.elapsed(),
                        error: Some(e.to_string()),
                    },
                };
                if let PrimaryVerdict::Lost(loss) = self.observe(&health, started) {
                    return Ok(loss);
                }
            }
        }
        .instrument(span)
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use async_trait::async_trait;
    use atlas_core::database::{Fence, Promotion, ReplicationStatus};

    use super::*;

    fn health(reachable: bool, writable: bool) -> PrimaryHealth {
        PrimaryHealth {
            reachable,
            writable,
            latency: Duration::from_millis(1),
            error: (!reachable).then(|| "connection refused".to_owned()),
        }
    }

    /// Answers checks from a script, then "down" forever; records when
    /// each check was made.
    struct Scripted {
        script: Mutex<VecDeque<Result<PrimaryHealth>>>,
        at: Mutex<Vec<Instant>>,
    }

    impl Scripted {
        fn new(script: Vec<Result<PrimaryHealth>>) -> Self {
            Scripted {
                script: Mutex::new(script.into()),
                at: Mutex::new(Vec::new()),
            }
        }
    }

    #[async_trait]
    impl DatabaseFailover for Scripted {
        async fn check_primary(&self) -> Result<PrimaryHealth> {
            self.at.lock().unwrap().push(Instant::now());
            self.script
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or_else(|| Ok(health(false, false)))
        }
        async fn replication(&self) -> Result<ReplicationStatus> {
            unreachable!("the watch only checks the primary")
        }
        async fn fence_primary(&self, _: &str) -> Result<Fence> {
            unreachable!("the watch only checks the primary")
        }
        async fn promote_standby(&self) -> Result<Promotion> {
            unreachable!("the watch only checks the primary")
        }
    }

    #[test]
    fn a_zero_limit_is_refused() {
        assert_eq!(
            PrimaryWatch::new(Duration::ZERO).unwrap_err().kind(),
            atlas_core::ErrorKind::InvalidInput
        );
        assert_eq!(
            PrimaryWatch::default().lost_after(),
            Duration::from_secs(30)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn lost_only_after_more_than_the_limit_of_continuous_failure() {
        let mut w = PrimaryWatch::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(w.observe(&health(true, true), at(0)), PrimaryVerdict::Up);
        assert!(matches!(
            w.observe(&health(false, false), at(5)),
            PrimaryVerdict::Down {
                failed_checks: 1,
                ..
            }
        ));
        // Exactly 30 s is not more than 30 s.
        assert_eq!(
            w.observe(&health(false, false), at(35)),
            PrimaryVerdict::Down {
                down_for: Duration::from_secs(30),
                failed_checks: 2
            }
        );
        match w.observe(&health(false, false), at(36)) {
            PrimaryVerdict::Lost(loss) => {
                assert_eq!(loss.down_for, Duration::from_secs(31));
                assert_eq!(loss.failed_checks, 3);
                assert!(
                    loss.reason().contains("connection refused"),
                    "{}",
                    loss.reason()
                );
            }
            other => panic!("expected lost, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn one_good_check_ends_the_outage_and_read_only_counts_as_down() {
        let mut w = PrimaryWatch::new(Duration::from_secs(10)).unwrap();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        w.observe(&health(false, false), at(0));
        w.observe(&health(false, false), at(9));
        assert_eq!(w.observe(&health(true, true), at(10)), PrimaryVerdict::Up);
        // A new outage counts from its own first failed check.
        assert!(matches!(
            w.observe(&health(true, false), at(11)),
            PrimaryVerdict::Down {
                failed_checks: 1,
                ..
            }
        ));
        assert!(matches!(
            w.observe(&health(true, false), at(21)),
            PrimaryVerdict::Down { .. }
        ));
        match w.observe(&health(true, false), at(22)) {
            PrimaryVerdict::Lost(loss) => assert_eq!(
                loss.last_error.as_deref(),
                Some("the primary refuses writes")
            ),
            other => panic!("expected lost, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn until_lost_checks_on_its_period_and_counts_errors_as_failures() {
        let db = Scripted::new(vec![
            Ok(health(true, true)),
            Ok(health(true, true)),
            Err(Error::transient("postgres", "timed out")),
            Ok(health(true, true)),
        ]);
        let t0 = Instant::now();
        let mut w = PrimaryWatch::default();
        let loss = w.until_lost(&db, Duration::from_secs(5)).await.unwrap();
        let at = db.at.lock().unwrap().clone();
        // Checks at 0, 5, 10 (error), 15 (up again), then down from 20 on:
        // lost at the first check more than 30 s later, 55.
        let secs: Vec<u64> = at.iter().map(|t| (*t - t0).as_secs()).collect();
        assert_eq!(secs, vec![0, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55]);
        assert_eq!(loss.down_for, Duration::from_secs(35));
        assert_eq!(loss.failed_checks, 8);
        assert_eq!(Instant::now() - t0, Duration::from_secs(55));
    }

    #[tokio::test(start_paused = true)]
    async fn an_error_check_alone_can_make_the_primary_lost() {
        let db = Scripted::new(
            (0..10)
                .map(|_| Err(Error::transient("postgres", "timed out")))
                .collect(),
        );
        let mut w = PrimaryWatch::new(Duration::from_secs(2)).unwrap();
        let loss = w.until_lost(&db, Duration::from_secs(1)).await.unwrap();
        assert_eq!(loss.down_for, Duration::from_secs(3));
        assert!(loss.last_error.unwrap().contains("timed out"));
        assert!(w.until_lost(&db, Duration::ZERO).await.is_err());
    }
}
