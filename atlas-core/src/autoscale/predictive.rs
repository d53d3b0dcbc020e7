//! Predictive scaling: forecast the load and add replicas before it
//! arrives, by at least the replicas' start-up time, with the reactive
//! horizontal autoscaler as a floor.
//!
//! The forecast becomes one more proposal beside the metrics' (the largest
//! wins) and goes through the same stabilization windows, rate policies and
//! bounds; so a forecast can bring replicas earlier, but never fewer than
//! the live load asks for, and never faster than the policy allows.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::hpa::{HorizontalAutoscaler, ScaleDecision, ScaleInput};
use crate::error::{Error, Result};

/// Forecasts a series sampled at a fixed step (a request rate every five
/// minutes, say). Implementations: [`SeasonalNaive`] here; an MSTL
/// forecaster in `atlas-metrics` (feature `forecast`).
pub trait Forecaster: Send + Sync {
    /// The `horizon` values that follow `history` (oldest first).
    ///
    /// # Errors
    ///
    /// Whatever keeps the model from fitting (too little history, a
    /// numerical failure); the caller falls back to reactive scaling.
    fn forecast(&self, history: &[f64], horizon: usize) -> Result<Vec<f64>>;
}

impl<F: Forecaster + ?Sized> Forecaster for Box<F> {
    fn forecast(&self, history: &[f64], horizon: usize) -> Result<Vec<f64>> {
        (**self).forecast(history, horizon)
    }
}

impl<F: Forecaster + ?Sized> Forecaster for std::sync::Arc<F> {
    fn forecast(&self, history: &[f64], horizon: usize) -> Result<Vec<f64>> {
        (**self).forecast(history, horizon)
    }
}

/// The simplest seasonal forecast: each value is the one a period earlier.
/// A baseline, and a forecaster for tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeasonalNaive {
    /// The season's length in samples (288 for a day of five-minute
    /// samples).
    pub period: usize,
}

impl Forecaster for SeasonalNaive {
    fn forecast(&self, history: &[f64], horizon: usize) -> Result<Vec<f64>> {
        if self.period == 0 {
            return Err(Error::invalid("period", "must be at least 1"));
        }
        if history.len() < self.period {
            return Err(Error::precondition(format!(
                "a seasonal-naive forecast needs one period ({}) of history, got {}",
                self.period,
                history.len()
            )));
        }
        let season = &history[history.len() - self.period..];
        Ok((0..horizon).map(|i| season[i % self.period]).collect())
    }
}

/// Settings of predictive scaling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredictivePolicy {
    /// The interval between load samples; more than 0.
    pub step: Duration,
    /// How long a new replica takes to serve: the forecast is read this far
    /// ahead (plus one step).
    pub startup: Duration,
    /// The load one replica serves at its target (500 requests/s in
    /// Atlas's web-service policy); more than 0.
    pub capacity_per_replica: f64,
    /// A factor on the forecast (1.0 = none; 1.1 = 10 % spare), at least 1.
    pub headroom: f64,
    /// Samples needed before forecasting at all; at least 1.
    pub min_history: usize,
    /// Samples kept (older ones are dropped); at least `min_history`.
    pub max_history: usize,
    /// Refit the model every this many samples (1 = every sample); the
    /// forecast in between is read further along. At least 1.
    pub refit_every: usize,
}

impl PredictivePolicy {
    /// Five-minute samples, a two-minute start-up, 500 per replica, no
    /// headroom, two weeks of history needed and three kept, a refit every
    /// hour.
    pub fn new(capacity_per_replica: f64) -> Self {
        PredictivePolicy {
            step: Duration::from_secs(300),
            startup: Duration::from_secs(120),
            capacity_per_replica,
            headroom: 1.0,
            min_history: 2 * 2016,
            max_history: 3 * 2016,
            refit_every: 12,
        }
    }

    /// How many samples ahead the forecast is read: the start-up time and
    /// one step, rounded up to whole steps.
    pub fn lookahead(&self) -> usize {
        let step = self.step.as_secs_f64();
        ((self.startup.as_secs_f64() / step).ceil() as usize).saturating_add(1)
    }

    /// Checks every rule.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] naming `step`, `capacity_per_replica`,
    /// `headroom`, `min_history`, `max_history` or `refit_every`.
    pub fn validate(&self) -> Result<()> {
        if self.step.is_zero() {
            return Err(Error::invalid("step", "must be greater than 0"));
        }
        let c = self.capacity_per_replica;
        if !c.is_finite() || c <= 0.0 {
            return Err(Error::invalid(
                "capacity_per_replica",
                format!("must be greater than 0, got {c}"),
            ));
        }
        if !self.headroom.is_finite() || self.headroom < 1.0 {
            return Err(Error::invalid(
                "headroom",
                format!("must be at least 1, got {}", self.headroom),
            ));
        }
        if self.min_history == 0 {
            return Err(Error::invalid("min_history", "must be at least 1"));
        }
        if self.max_history < self.min_history {
            return Err(Error::invalid(
                "max_history",
                format!("must be at least min_history ({})", self.min_history),
            ));
        }
        if self.refit_every == 0 {
            return Err(Error::invalid("refit_every", "must be at least 1"));
        }
        Ok(())
    }
}

/// A decision of the predictive autoscaler.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredictiveDecision {
    /// The decision to apply.
    pub decision: ScaleDecision,
    /// What the reactive autoscaler alone would have decided now: the
    /// floor.
    pub reactive_replicas: u32,
    /// The replicas the forecast asks for, when there is a forecast.
    pub predicted_replicas: Option<u32>,
    /// The highest forecast load over the look-ahead.
    pub forecast_peak: Option<f64>,
}

/// A [`HorizontalAutoscaler`] that also scales for the forecast load.
///
/// Feed it the load once per [`PredictivePolicy::step`] with
/// [`record_load`](Self::record_load), and ask it at every sync with
/// [`recommend`](Self::recommend).
#[derive(Debug)]
pub struct PredictiveAutoscaler<F> {
    reactive: HorizontalAutoscaler,
    forecaster: F,
    policy: PredictivePolicy,
    history: VecDeque<f64>,
    /// The last forecast, and how many samples have arrived since it.
    forecast: Option<(Vec<f64>, usize)>,
    /// When the last sample was taken, if the caller said.
    last_sample_at: Option<Instant>,
    last_error: Option<String>,
}

impl<F: Forecaster> PredictiveAutoscaler<F> {
    /// A predictive autoscaler over `reactive`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] naming the field of `policy` that breaks a
    /// rule (see [`PredictivePolicy::validate`]).
    pub fn new(
        reactive: HorizontalAutoscaler,
        forecaster: F,
        policy: PredictivePolicy,
    ) -> Result<Self> {
        policy.validate()?;
        Ok(PredictiveAutoscaler {
            reactive,
            forecaster,
            history: VecDeque::with_capacity(policy.max_history.min(1 << 16)),
            policy,
            forecast: None,
            last_sample_at: None,
            last_error: None,
        })
    }

    /// The reactive autoscaler underneath.
    pub fn reactive(&self) -> &HorizontalAutoscaler {
        &self.reactive
    }

    /// The settings.
    pub fn policy(&self) -> &PredictivePolicy {
        &self.policy
    }

    /// Why the last forecast failed, if it did.
    pub fn last_forecast_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// Adds the load of the step that just ended (requests/s, or whatever
    /// unit `capacity_per_replica` is in), refitting the model when due.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] (field `load`) for a negative or non-finite
    /// value; nothing is recorded then.
    pub fn record_load(&mut self, load: f64) -> Result<()> {
        if !load.is_finite() || load < 0.0 {
            return Err(Error::invalid(
                "load",
                format!("must be a finite number of at least 0, got {load}"),
            ));
        }
        if self.history.len() == self.policy.max_history {
            self.history.pop_front();
        }
        self.history.push_back(load);
        let due = match &mut self.forecast {
            Some((_, since)) => {
                *since += 1;
                *since >= self.policy.refit_every
            }
            None => true,
        };
        if due && self.history.len() >= self.policy.min_history {
            self.refit();
        }
        Ok(())
    }

    /// As [`record_load`](Self::record_load), for a sample taken at `at`:
    /// decisions then read the forecast between now and now + start-up
    /// time exactly (the series taken as linear between samples), instead
    /// of whole steps ahead.
    ///
    /// # Errors
    ///
    /// As [`record_load`](Self::record_load).
    pub fn record_load_at(&mut self, at: Instant, load: f64) -> Result<()> {
        self.record_load(load)?;
        self.last_sample_at = Some(at);
        Ok(())
    }

    /// Adds many samples, oldest first: a history to start from.
    ///
    /// # Errors
    ///
    /// As [`record_load`](Self::record_load); samples before the bad one
    /// stay recorded.
    pub fn record_history(&mut self, loads: impl IntoIterator<Item = f64>) -> Result<()> {
        for load in loads {
            self.record_load(load)?;
        }
        Ok(())
    }

    fn refit(&mut self) {
        let span = tracing::debug_span!("atlas.autoscale.forecast", samples = self.history.len());
        let _entered = span.enter();
        let horizon = self.policy.refit_every + self.policy.lookahead();
        let history = self.history.make_contiguous();
        match self.forecaster.forecast(history, horizon) {
            Ok(points) if points.len() >= horizon && points.iter().all(|p| p.is_finite()) => {
                self.forecast = Some((points, 0));
                self.last_error = None;
            }
            Ok(points) => self.forecast_failed(format!(
                "the forecaster returned {} usable points of {horizon}",
                points.iter().filter(|p| p.is_finite()).count()
            )),
            Err(e) => self.forecast_failed(e.to_string()),
        }
    }

    fn forecast_failed(&mut self, reason: String) {
        tracing::warn!(%reason, "forecast failed; scaling reactively");
        self.forecast = None;
        self.last_error = Some(reason);
    }

    /// The highest forecast load over the look-ahead, from the latest fit.
    pub fn forecast_peak(&self) -> Option<f64> {
        let (points, since) = self.forecast.as_ref()?;
        let ahead = points.get(*since..*since + self.policy.lookahead())?;
        ahead.iter().copied().reduce(f64::max)
    }

    /// The highest forecast load between `now` and `now` + start-up time,
    /// the series taken as linear between samples: the last sample, then
    /// the forecast one step apart. Needs samples recorded with
    /// [`record_load_at`](Self::record_load_at); without a time it is
    /// [`forecast_peak`](Self::forecast_peak). `None` past the forecast's
    /// end.
    pub fn forecast_peak_at(&self, now: Instant) -> Option<f64> {
        let (Some(at), Some((points, since)), Some(last)) = (
            self.last_sample_at,
            self.forecast.as_ref(),
            self.history.back(),
        ) else {
            return self.forecast_peak();
        };
        let step = self.policy.step.as_secs_f64();
        let from = now.saturating_duration_since(at).as_secs_f64() / step;
        let to = from + self.policy.startup.as_secs_f64() / step;
        // Position k (in steps after the last sample) is `last` at 0 and
        // the forecast's point `since + k - 1` after.
        let value = |k: usize| -> Option<f64> {
            if k == 0 {
                Some(*last)
            } else {
                points.get(since + k - 1).copied()
            }
        };
        let at_position = |x: f64| -> Option<f64> {
            let k = x.floor() as usize;
            let frac = x - x.floor();
            let a = value(k)?;
            if frac == 0.0 {
                return Some(a);
            }
            Some(a + (value(k + 1)? - a) * frac)
        };
        let mut peak = at_position(from)?.max(at_position(to)?);
        let mut k = from.floor() as usize + 1;
        while (k as f64) < to {
            peak = peak.max(value(k)?);
            k += 1;
        }
        Some(peak)
    }

    /// The replicas the forecast asks for, whole steps ahead (see
    /// [`forecast_peak`](Self::forecast_peak)).
    pub fn predicted_replicas(&self) -> Option<u32> {
        Some(self.replicas_for(self.forecast_peak()?))
    }

    /// The replicas the forecast asks for at `now` (see
    /// [`forecast_peak_at`](Self::forecast_peak_at)).
    pub fn predicted_replicas_at(&self, now: Instant) -> Option<u32> {
        Some(self.replicas_for(self.forecast_peak_at(now)?))
    }

    fn replicas_for(&self, peak: f64) -> u32 {
        let n = (peak.max(0.0) * self.policy.headroom / self.policy.capacity_per_replica).ceil();
        if n >= f64::from(u32::MAX) {
            u32::MAX
        } else {
            n as u32
        }
    }

    /// Decides the replica count at `now`: the reactive decision with the
    /// forecast's replica count as one more proposal, and never below the
    /// reactive decision alone.
    ///
    /// # Errors
    ///
    /// As [`HorizontalAutoscaler::recommend`].
    pub fn recommend(&mut self, now: Instant, input: &ScaleInput) -> Result<PredictiveDecision> {
        let reactive = self
            .reactive
            .clone()
            .recommend(now, input)?
            .desired_replicas;
        let predicted = self.predicted_replicas_at(now);
        let mut decision = self.reactive.recommend_with_floor(now, input, predicted)?;
        // Stabilization and rate limits are monotone in the proposal, so
        // this never binds; it states the guarantee where it is relied on.
        decision.desired_replicas = decision.desired_replicas.max(reactive);
        tracing::debug!(
            reactive,
            predicted,
            desired = decision.desired_replicas,
            "predictive decision"
        );
        Ok(PredictiveDecision {
            decision,
            reactive_replicas: reactive,
            predicted_replicas: predicted,
            forecast_peak: self.forecast_peak_at(now),
        })
    }

    /// Remembers an applied change, as [`HorizontalAutoscaler::record_scale`].
    pub fn record_scale(&mut self, now: Instant, from: u32, to: u32) {
        self.reactive.record_scale(now, from, to);
    }
}
