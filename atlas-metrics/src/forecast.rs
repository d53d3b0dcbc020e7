//! [`MstlForecaster`]: forecasts a load series with MSTL (multiple seasonal
//! decomposition by LOESS) for the daily and weekly seasons, and a
//! non-seasonal AutoETS model for the trend that is left, via augurs.
//!
//! AutoETS in augurs has no seasonal models of its own, so the seasons are
//! MSTL's and the exponential smoothing sees only the deseasonalised series.

use std::time::Duration;

use atlas_core::autoscale::Forecaster;
use atlas_core::{Error, Result};
use augurs_core::{Fit, Predict};
use augurs_ets::AutoETS;
use augurs_mstl::MSTLModel;

/// The backend named in errors.
const BACKEND: &str = "augurs";

/// The fewest samples forecast: AutoETS with a trend fits four parameters
/// and refuses fewer than nine points.
pub const MIN_SAMPLES: usize = 9;

/// An MSTL forecaster with seasonal periods in samples.
///
/// A season needs two full periods of history to be fitted; seasons the
/// history is too short for are left out, and with none left the series is
/// forecast by AutoETS alone.
///
/// ```
/// use std::time::Duration;
/// use atlas_core::autoscale::Forecaster;
/// use atlas_metrics::forecast::MstlForecaster;
///
/// // Hourly samples, a daily season: two days of a square wave.
/// let day: Vec<f64> = (0..24).map(|h| if (9..17).contains(&h) { 900.0 } else { 100.0 }).collect();
/// let history: Vec<f64> = day.iter().chain(&day).chain(&day).copied().collect();
/// let f = MstlForecaster::daily_weekly(Duration::from_secs(3600))?;
/// let next = f.forecast(&history, 24)?;
/// assert!(next[12] > 600.0 && next[2] < 400.0, "{next:?}");
/// # Ok::<(), atlas_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MstlForecaster {
    periods: Vec<usize>,
}

impl MstlForecaster {
    /// A forecaster with these seasonal periods (in samples), each at
    /// least 2.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] (field `periods`) for an empty list or a
    /// period under 2.
    pub fn new(periods: Vec<usize>) -> Result<Self> {
        if periods.is_empty() {
            return Err(Error::invalid("periods", "must hold at least one period"));
        }
        if let Some(p) = periods.iter().find(|p| **p < 2) {
            return Err(Error::invalid(
                "periods",
                format!("each period must be at least 2 samples, got {p}"),
            ));
        }
        Ok(MstlForecaster { periods })
    }

    /// Daily and weekly seasons for samples `step` apart (288 and 2016 for
    /// five minutes, 48 and 336 for half an hour).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] (field `step`) when `step` is 0 or longer
    /// than half a day, or does not divide a day.
    pub fn daily_weekly(step: Duration) -> Result<Self> {
        const DAY: u64 = 24 * 3600;
        let secs = step.as_secs();
        if secs == 0 || step.subsec_nanos() != 0 || !DAY.is_multiple_of(secs) || secs > DAY / 2 {
            return Err(Error::invalid(
                "step",
                format!(
                    "must be a whole number of seconds that divides a day into at least two, got {step:?}"
                ),
            ));
        }
        let per_day = (DAY / secs) as usize;
        Self::new(vec![per_day, 7 * per_day])
    }

    /// The seasonal periods, in samples.
    pub fn periods(&self) -> &[usize] {
        &self.periods
    }
}

impl Forecaster for MstlForecaster {
    fn forecast(&self, history: &[f64], horizon: usize) -> Result<Vec<f64>> {
        let span = tracing::debug_span!("atlas.forecast.mstl", samples = history.len(), horizon);
        let _entered = span.enter();
        if history.len() < MIN_SAMPLES {
            return Err(Error::precondition(format!(
                "forecasting needs at least {MIN_SAMPLES} samples, got {}",
                history.len()
            )));
        }
        if let Some(bad) = history.iter().find(|v| !v.is_finite()) {
            return Err(Error::invalid("history", format!("holds {bad}")));
        }
        let periods: Vec<usize> = self
            .periods
            .iter()
            .copied()
            .filter(|p| history.len() >= 2 * p)
            .collect();
        let trend = AutoETS::non_seasonal();
        let points = if periods.is_empty() {
            tracing::debug!("history shorter than two of any season: trend only");
            let fitted = trend
                .fit(history)
                .map_err(|e| Error::backend_with(BACKEND, "fitting AutoETS", e))?;
            fitted
                .predict(horizon, None)
                .map_err(|e| Error::backend_with(BACKEND, "forecasting with AutoETS", e))?
                .point
        } else {
            let model = MSTLModel::new(periods.clone(), trend.into_trend_model());
            let fitted = model
                .fit(history)
                .map_err(|e| Error::backend_with(BACKEND, "fitting MSTL", e))?;
            fitted
                .predict(horizon, None)
                .map_err(|e| Error::backend_with(BACKEND, "forecasting with MSTL", e))?
                .point
        };
        tracing::debug!(?periods, "forecast made");
        Ok(points)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_daily_and_weekly_pattern_is_forecast_from_its_seasons() {
        // Hourly samples, three weeks: a daily wave, quieter weekends, a
        // slow upward trend.
        let value = |h: usize| {
            let day = (h / 24) % 7;
            let daily = 500.0 + 400.0 * ((h % 24) as f64 / 24.0 * std::f64::consts::TAU).sin();
            let weekend = if day >= 5 { 0.6 } else { 1.0 };
            daily * weekend + h as f64 * 0.5
        };
        let history: Vec<f64> = (0..24 * 21).map(value).collect();
        let f = MstlForecaster::daily_weekly(Duration::from_secs(3600)).unwrap();
        assert_eq!(f.periods(), &[24, 168]);
        let next = f.forecast(&history, 48).unwrap();
        assert_eq!(next.len(), 48);
        let truth: Vec<f64> = (24 * 21..24 * 21 + 48).map(value).collect();
        let mae = next
            .iter()
            .zip(&truth)
            .map(|(a, b)| (a - b).abs())
            .sum::<f64>()
            / 48.0;
        // The wave's amplitude is 400: a forecast that missed the seasons
        // would be off by about 250 on average.
        assert!(mae < 40.0, "mean absolute error {mae}: {next:?}");
    }

    #[test]
    fn short_history_falls_back_to_the_trend_and_bad_input_is_refused() {
        let f = MstlForecaster::new(vec![24, 168]).unwrap();
        let rising: Vec<f64> = (0..12).map(|i| 10.0 + f64::from(i)).collect();
        let next = f.forecast(&rising, 3).unwrap();
        assert_eq!(next.len(), 3);
        assert!(next[0] > 20.0, "{next:?}");
        assert_eq!(
            f.forecast(&[1.0; 8], 3).unwrap_err().kind(),
            atlas_core::ErrorKind::Precondition
        );
        let nan = f
            .forecast(&[1.0, f64::NAN, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0], 3)
            .unwrap_err();
        assert!(nan.to_string().starts_with("invalid history"), "{nan}");
        for (periods, ok) in [(vec![], false), (vec![1], false), (vec![2], true)] {
            assert_eq!(MstlForecaster::new(periods).is_ok(), ok);
        }
        for secs in [0, 7, 86_400] {
            let err = MstlForecaster::daily_weekly(Duration::from_secs(secs)).unwrap_err();
            assert!(err.to_string().starts_with("invalid step"), "{err}");
        }
    }
}
