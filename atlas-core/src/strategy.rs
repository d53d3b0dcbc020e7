//! Strategies are data; [`Strategy::compile`] turns one into the list of
//! [`Step`]s that the [engine](crate::engine) executes.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::domain::{RequestMatch, Weight};
use crate::error::{Error, Result};

/// Argo Rollouts' default scale-down delay for the old slot.
pub const DEFAULT_SCALE_DOWN_DELAY: Duration = Duration::from_secs(30);

/// The most replicas a strategy may ask for: 10 000, for `replicas`,
/// `preview_replicas` and a canary scale alike.
///
/// One service on one host, or one Kubernetes Deployment, runs far fewer;
/// a larger number is a typo (an extra digit, a value meant for another
/// field) or a wrapped-around negative, and taking it literally would ask a
/// platform for billions of processes or pods. The bound also keeps replica
/// arithmetic (a weight's share of the replicas, rounded up) far from
/// overflow.
pub const MAX_REPLICAS: u32 = 10_000;

/// The reference blue-green flow with staged traffic shifting.
///
/// Deploy the idle slot, probe it until healthy, optionally run
/// pre-promotion analysis and wait for manual promotion, send a 5 % canary,
/// analyse, shift 25 → 50 → 75 → 100 % with analysis between steps, run
/// post-promotion analysis, make the new slot stable, keep the old slot for
/// `scale_down_delay`, then scale it down.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlueGreen {
    /// Replicas of the new release once promoted.
    pub replicas: u32,
    /// Replicas while previewing, before any traffic. Default: `replicas`.
    pub preview_replicas: Option<u32>,
    /// When false, the rollout pauses before the first traffic until
    /// promoted by hand. Default true.
    pub auto_promotion: bool,
    /// Canary weights to step through, ending at 100. Default 5, 25, 50, 75, 100.
    pub traffic_steps: Vec<Weight>,
    /// Analysis template run after every traffic step below 100 %.
    pub step_analysis: Option<String>,
    /// Analysis template run on the preview, before any traffic.
    pub pre_promotion_analysis: Option<String>,
    /// Analysis template run at 100 %, before the old slot is released.
    pub post_promotion_analysis: Option<String>,
    /// How long the old slot keeps running after promotion. Default 30 s.
    pub scale_down_delay: Duration,
    /// Requests matching this go to the new slot from the first traffic step.
    pub canary_match: Option<RequestMatch>,
}

impl BlueGreen {
    /// The reference flow with `replicas` replicas and the default steps.
    pub fn new(replicas: u32) -> Self {
        BlueGreen {
            replicas,
            preview_replicas: None,
            auto_promotion: true,
            traffic_steps: [5, 25, 50, 75, 100].map(Weight).to_vec(),
            step_analysis: None,
            pre_promotion_analysis: None,
            post_promotion_analysis: None,
            scale_down_delay: DEFAULT_SCALE_DOWN_DELAY,
            canary_match: None,
        }
    }

    /// Runs `template` after every traffic step below 100 %.
    pub fn with_step_analysis(mut self, template: impl Into<String>) -> Self {
        self.step_analysis = Some(template.into());
        self
    }

    /// Sets the scale-down delay.
    pub fn with_scale_down_delay(mut self, delay: Duration) -> Self {
        self.scale_down_delay = delay;
        self
    }
}

/// How many replicas the canary slot runs during a [`Canary`] rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CanaryScale {
    /// An exact count.
    Replicas(u32),
    /// A percentage of the rollout's replicas, rounded up.
    Weight(Weight),
    /// As many as the current traffic weight implies, rounded up (the default).
    MatchTrafficWeight,
}

/// One user step of a [`Canary`] strategy, as in Argo Rollouts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CanaryStep {
    /// Send this share of traffic to the canary.
    SetWeight(Weight),
    /// Wait this long, or until promoted when `None`.
    Pause(Option<Duration>),
    /// Run this analysis template; failure rolls back.
    Analysis(String),
    /// Change the canary slot's replica count.
    SetCanaryScale(CanaryScale),
}

/// Argo-style canary: a list of steps over the canary slot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Canary {
    /// Replicas of the new release once promoted.
    pub replicas: u32,
    /// The steps, in order.
    pub steps: Vec<CanaryStep>,
    /// How long the old slot keeps running after promotion. Default 30 s.
    pub scale_down_delay: Duration,
    /// Requests matching this go to the canary from the first step.
    pub canary_match: Option<RequestMatch>,
}

impl Canary {
    /// A canary of `replicas` replicas through `steps`.
    pub fn new(replicas: u32, steps: Vec<CanaryStep>) -> Self {
        Canary {
            replicas,
            steps,
            scale_down_delay: DEFAULT_SCALE_DOWN_DELAY,
            canary_match: None,
        }
    }
}

/// A rollout strategy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// See [`BlueGreen`].
    BlueGreen(BlueGreen),
    /// See [`Canary`].
    Canary(Canary),
}

/// One step the engine executes. Every step is idempotent, so a resumed
/// engine may run the step it crashed in again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Deploy the release to the canary slot with this many replicas and
    /// wait until the workloads report them ready.
    Deploy {
        /// Replica count.
        replicas: u32,
    },
    /// Probe every canary endpoint with the rollout's probe policy, then
    /// hand the endpoints to the router.
    AwaitHealthy,
    /// Send `weight` of traffic to the canary slot.
    SetWeight(Weight),
    /// Wait `Some(d)`, or until promoted.
    Pause(Option<Duration>),
    /// Run an analysis template; failure rolls back.
    Analysis {
        /// Template name.
        template: String,
    },
    /// Scale the canary slot, wait for readiness, probe, update endpoints.
    ScaleCanary {
        /// Replica count.
        replicas: u32,
    },
    /// Make the canary slot stable: all traffic to it, in one router call.
    Promote,
    /// Wait `delay`, drain the old slot's endpoints, scale it to zero.
    ScaleDownOld {
        /// Time the old slot stays up after promotion.
        delay: Duration,
    },
}

impl Step {
    /// Whether the step is a pause (skipped by a promote).
    pub fn is_pause(&self) -> bool {
        matches!(self, Step::Pause(_))
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Deploy { replicas } => write!(f, "deploy {replicas} replicas"),
            Step::AwaitHealthy => f.write_str("probe until healthy"),
            Step::SetWeight(w) => write!(f, "set canary weight {w}"),
            Step::Pause(Some(d)) => write!(f, "pause {}", humantime::format_duration(*d)),
            Step::Pause(None) => f.write_str("pause until promoted"),
            Step::Analysis { template } => write!(f, "analysis {template}"),
            Step::ScaleCanary { replicas } => write!(f, "scale canary to {replicas}"),
            Step::Promote => f.write_str("promote"),
            Step::ScaleDownOld { delay } => write!(
                f,
                "scale down old slot after {}",
                humantime::format_duration(*delay)
            ),
        }
    }
}

impl Strategy {
    /// Replicas of the new release once promoted.
    pub fn replicas(&self) -> u32 {
        match self {
            Strategy::BlueGreen(b) => b.replicas,
            Strategy::Canary(c) => c.replicas,
        }
    }

    /// The match rule sending chosen requests to the canary, if any.
    pub fn canary_match(&self) -> Option<&RequestMatch> {
        match self {
            Strategy::BlueGreen(b) => b.canary_match.as_ref(),
            Strategy::Canary(c) => c.canary_match.as_ref(),
        }
    }

    /// Template names the strategy refers to, with the field path of each.
    pub fn analysis_refs(&self) -> Vec<(String, &str)> {
        match self {
            Strategy::BlueGreen(b) => [
                ("strategy.blue_green.step_analysis", &b.step_analysis),
                (
                    "strategy.blue_green.pre_promotion_analysis",
                    &b.pre_promotion_analysis,
                ),
                (
                    "strategy.blue_green.post_promotion_analysis",
                    &b.post_promotion_analysis,
                ),
            ]
            .into_iter()
            .filter_map(|(p, t)| t.as_deref().map(|t| (p.to_string(), t)))
            .collect(),
            Strategy::Canary(c) => c
                .steps
                .iter()
                .enumerate()
                .filter_map(|(i, s)| match s {
                    CanaryStep::Analysis(t) => {
                        Some((format!("strategy.canary.steps[{i}].analysis"), t.as_str()))
                    }
                    _ => None,
                })
                .collect(),
        }
    }

    /// Checks the rules that do not need the rest of the rollout: replicas
    /// between 1 and [`MAX_REPLICAS`], a canary scale of at most the
    /// strategy's replicas, weights non-decreasing and ending at 100 for
    /// blue-green.
    pub fn validate(&self) -> Result<()> {
        match self {
            Strategy::BlueGreen(b) => {
                let at = "strategy.blue_green";
                if b.replicas < 1 {
                    return Err(Error::invalid(
                        format!("{at}.replicas"),
                        "must be at least 1",
                    ));
                }
                check_replicas(&format!("{at}.replicas"), b.replicas)?;
                if b.preview_replicas == Some(0) {
                    return Err(Error::invalid(
                        format!("{at}.preview_replicas"),
                        "must be at least 1",
                    ));
                }
                if let Some(n) = b.preview_replicas {
                    check_replicas(&format!("{at}.preview_replicas"), n)?;
                }
                if b.traffic_steps.is_empty() {
                    return Err(Error::invalid(
                        format!("{at}.traffic_steps"),
                        "must have at least one step",
                    ));
                }
                check_non_decreasing(&b.traffic_steps, &format!("{at}.traffic_steps"))?;
                if b.traffic_steps.last() != Some(&Weight::FULL) {
                    return Err(Error::invalid(
                        format!("{at}.traffic_steps"),
                        "must end at 100",
                    ));
                }
            }
            Strategy::Canary(c) => {
                let at = "strategy.canary";
                if c.replicas < 1 {
                    return Err(Error::invalid(
                        format!("{at}.replicas"),
                        "must be at least 1",
                    ));
                }
                check_replicas(&format!("{at}.replicas"), c.replicas)?;
                let mut last = Weight::ZERO;
                for (i, s) in c.steps.iter().enumerate() {
                    match s {
                        CanaryStep::SetWeight(w) => {
                            if *w < last {
                                return Err(Error::invalid(
                                    format!("{at}.steps[{i}].set_weight"),
                                    format!("must not decrease (was {}, now {})", last.0, w.0),
                                ));
                            }
                            last = *w;
                        }
                        CanaryStep::SetCanaryScale(CanaryScale::Replicas(0)) => {
                            return Err(Error::invalid(
                                format!("{at}.steps[{i}].set_canary_scale.replicas"),
                                "must be at least 1",
                            ));
                        }
                        CanaryStep::SetCanaryScale(CanaryScale::Replicas(n)) if *n > c.replicas => {
                            return Err(Error::invalid(
                                format!("{at}.steps[{i}].set_canary_scale.replicas"),
                                canary_scale_rule(*n, c.replicas),
                            ));
                        }
                        CanaryStep::Pause(Some(d)) if d.is_zero() => {
                            return Err(Error::invalid(
                                format!("{at}.steps[{i}].pause.duration"),
                                "must be greater than 0 (omit it to wait for promotion)",
                            ));
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok(())
    }

    /// The steps of this strategy. `initial` is true when the stable slot
    /// runs nothing: then there is no baseline to compare against, so the
    /// release is deployed, probed and given all traffic at once.
    pub fn compile(&self, initial: bool) -> Vec<Step> {
        let replicas = self.replicas();
        if initial {
            return vec![
                Step::Deploy { replicas },
                Step::AwaitHealthy,
                Step::SetWeight(Weight::FULL),
                Step::Promote,
                // Nothing to scale down, but hooks that wait for the old
                // version to be gone (contract migrations) run here.
                Step::ScaleDownOld {
                    delay: Duration::ZERO,
                },
            ];
        }
        let mut steps = Vec::new();
        match self {
            Strategy::BlueGreen(b) => {
                let preview = b.preview_replicas.unwrap_or(b.replicas);
                steps.push(Step::Deploy { replicas: preview });
                steps.push(Step::AwaitHealthy);
                if let Some(t) = &b.pre_promotion_analysis {
                    steps.push(Step::Analysis {
                        template: t.clone(),
                    });
                }
                if !b.auto_promotion {
                    steps.push(Step::Pause(None));
                }
                if preview != b.replicas {
                    steps.push(Step::ScaleCanary {
                        replicas: b.replicas,
                    });
                }
                for w in &b.traffic_steps {
                    steps.push(Step::SetWeight(*w));
                    if *w < Weight::FULL
                        && let Some(t) = &b.step_analysis
                    {
                        steps.push(Step::Analysis {
                            template: t.clone(),
                        });
                    }
                }
                if let Some(t) = &b.post_promotion_analysis {
                    steps.push(Step::Analysis {
                        template: t.clone(),
                    });
                }
                steps.push(Step::Promote);
                steps.push(Step::ScaleDownOld {
                    delay: b.scale_down_delay,
                });
            }
            Strategy::Canary(c) => {
                // The canary starts at the scale its first step implies.
                let mut weight = Weight::ZERO;
                let mut scale = CanaryScale::MatchTrafficWeight;
                let initial_replicas = canary_replicas(
                    c.replicas,
                    CanaryScale::MatchTrafficWeight,
                    first_weight(&c.steps),
                );
                let mut current = initial_replicas;
                steps.push(Step::Deploy {
                    replicas: initial_replicas,
                });
                steps.push(Step::AwaitHealthy);
                for s in &c.steps {
                    match s {
                        CanaryStep::SetWeight(w) => {
                            weight = *w;
                            let want = canary_replicas(c.replicas, scale, weight);
                            if want > current {
                                // Scale up before the traffic arrives.
                                steps.push(Step::ScaleCanary { replicas: want });
                                current = want;
                            }
                            steps.push(Step::SetWeight(*w));
                        }
                        CanaryStep::Pause(d) => steps.push(Step::Pause(*d)),
                        CanaryStep::Analysis(t) => steps.push(Step::Analysis {
                            template: t.clone(),
                        }),
                        CanaryStep::SetCanaryScale(s) => {
                            scale = *s;
                            let want = canary_replicas(c.replicas, scale, weight);
                            if want != current {
                                steps.push(Step::ScaleCanary { replicas: want });
                                current = want;
                            }
                        }
                    }
                }
                if current != c.replicas {
                    steps.push(Step::ScaleCanary {
                        replicas: c.replicas,
                    });
                }
                if weight != Weight::FULL {
                    steps.push(Step::SetWeight(Weight::FULL));
                }
                steps.push(Step::Promote);
                steps.push(Step::ScaleDownOld {
                    delay: c.scale_down_delay,
                });
            }
        }
        steps
    }
}

fn first_weight(steps: &[CanaryStep]) -> Weight {
    steps
        .iter()
        .find_map(|s| match s {
            CanaryStep::SetWeight(w) => Some(*w),
            _ => None,
        })
        .unwrap_or(Weight::FULL)
}

fn canary_replicas(total: u32, scale: CanaryScale, weight: Weight) -> u32 {
    let pct = |w: Weight| (u64::from(total) * u64::from(w.0)).div_ceil(100) as u32;
    match scale {
        CanaryScale::Replicas(n) => n,
        CanaryScale::Weight(w) => pct(w).max(1),
        CanaryScale::MatchTrafficWeight => pct(weight).max(1),
    }
}

/// Refuses a replica count above [`MAX_REPLICAS`] (zero is checked where
/// each field's own message says so).
fn check_replicas(at: &str, n: u32) -> Result<()> {
    if n > MAX_REPLICAS {
        return Err(Error::invalid(
            at,
            format!("must be at most {MAX_REPLICAS}, got {n}"),
        ));
    }
    Ok(())
}

/// The rule a canary scale of `n` replicas breaks when the rollout has only
/// `replicas`: the canary never runs more than the promoted release will.
pub(crate) fn canary_scale_rule(n: u32, replicas: u32) -> String {
    format!("must be at most the strategy's replicas ({replicas}), got {n}")
}

fn check_non_decreasing(weights: &[Weight], at: &str) -> Result<()> {
    for (i, pair) in weights.windows(2).enumerate() {
        if pair[1] < pair[0] {
            return Err(Error::invalid(
                format!("{at}[{}]", i + 1),
                format!(
                    "weights must not decrease (was {}, now {})",
                    pair[0].0, pair[1].0
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blue_green_compiles_to_the_reference_flow() {
        let s = Strategy::BlueGreen(BlueGreen::new(3).with_step_analysis("health"));
        let a = || Step::Analysis {
            template: "health".into(),
        };
        assert_eq!(
            s.compile(false),
            vec![
                Step::Deploy { replicas: 3 },
                Step::AwaitHealthy,
                Step::SetWeight(Weight(5)),
                a(),
                Step::SetWeight(Weight(25)),
                a(),
                Step::SetWeight(Weight(50)),
                a(),
                Step::SetWeight(Weight(75)),
                a(),
                Step::SetWeight(Weight(100)),
                Step::Promote,
                Step::ScaleDownOld {
                    delay: Duration::from_secs(30)
                },
            ]
        );
    }

    #[test]
    fn manual_blue_green_with_preview_pauses_then_scales() {
        let mut b = BlueGreen::new(4);
        b.auto_promotion = false;
        b.preview_replicas = Some(1);
        b.pre_promotion_analysis = Some("smoke".into());
        let steps = Strategy::BlueGreen(b).compile(false);
        assert_eq!(steps[0], Step::Deploy { replicas: 1 });
        assert_eq!(
            steps[2],
            Step::Analysis {
                template: "smoke".into()
            }
        );
        assert_eq!(steps[3], Step::Pause(None));
        assert_eq!(steps[4], Step::ScaleCanary { replicas: 4 });
    }

    #[test]
    fn canary_scales_with_traffic_and_finishes_at_full() {
        let c = Canary::new(
            10,
            vec![
                CanaryStep::SetWeight(Weight(20)),
                CanaryStep::Pause(Some(Duration::from_secs(60))),
                CanaryStep::SetWeight(Weight(50)),
                CanaryStep::Analysis("a".into()),
            ],
        );
        let steps = Strategy::Canary(c).compile(false);
        assert_eq!(
            steps,
            vec![
                Step::Deploy { replicas: 2 },
                Step::AwaitHealthy,
                Step::SetWeight(Weight(20)),
                Step::Pause(Some(Duration::from_secs(60))),
                Step::ScaleCanary { replicas: 5 },
                Step::SetWeight(Weight(50)),
                Step::Analysis {
                    template: "a".into()
                },
                Step::ScaleCanary { replicas: 10 },
                Step::SetWeight(Weight(100)),
                Step::Promote,
                Step::ScaleDownOld {
                    delay: Duration::from_secs(30)
                },
            ]
        );
    }

    #[test]
    fn initial_deploys_go_straight_to_full() {
        let s = Strategy::BlueGreen(BlueGreen::new(2));
        assert_eq!(
            s.compile(true),
            vec![
                Step::Deploy { replicas: 2 },
                Step::AwaitHealthy,
                Step::SetWeight(Weight::FULL),
                Step::Promote,
                Step::ScaleDownOld {
                    delay: Duration::ZERO
                },
            ]
        );
    }

    #[test]
    fn validation_names_the_field() {
        let mut b = BlueGreen::new(0);
        let e = Strategy::BlueGreen(b.clone()).validate().unwrap_err();
        assert!(
            e.to_string().contains("strategy.blue_green.replicas"),
            "{e}"
        );
        b.replicas = 1;
        b.traffic_steps = vec![Weight(50), Weight(25), Weight(100)];
        let e = Strategy::BlueGreen(b.clone()).validate().unwrap_err();
        assert!(e.to_string().contains("traffic_steps[1]"), "{e}");
        b.traffic_steps = vec![Weight(50)];
        let e = Strategy::BlueGreen(b).validate().unwrap_err();
        assert!(e.to_string().contains("must end at 100"), "{e}");
        let c = Canary::new(
            1,
            vec![
                CanaryStep::SetWeight(Weight(50)),
                CanaryStep::SetWeight(Weight(10)),
            ],
        );
        let e = Strategy::Canary(c).validate().unwrap_err();
        assert!(
            e.to_string()
                .contains("strategy.canary.steps[1].set_weight"),
            "{e}"
        );
    }
}
