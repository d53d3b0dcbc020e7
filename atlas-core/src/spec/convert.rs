//! Spec ⇄ domain: validation in the file's terms, and the way back.
//!
//! Every rule is checked here, against the spec, before a domain value is
//! built, so that each error names the field exactly as it is spelled in the
//! file. The domain's own `validate()` runs last as a backstop.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::durations::{duration, format_duration};
use super::types::{
    AnalysisTemplateSpec, BlueGreenSpec, CanaryScaleSpec, CanarySpec, CanaryStepSpec,
    InconclusiveSpec, MetricSpec, NameValueSpec, PauseSpec, ProbeSpec, ReleaseSpec,
    RequestMatchSpec, RolloutSpec, StrategySpec,
};
use crate::analysis::{AnalysisMetric, AnalysisTemplate, Condition, render_query};
use crate::domain::{Release, RequestMatch, ServiceName, Weight};
use crate::error::{Error, Result};
use crate::probe::ProbePolicy;
use crate::rollout::{DEFAULT_PROGRESS_DEADLINE, InconclusivePolicy, Rollout};
use crate::strategy::{
    BlueGreen, Canary, CanaryScale, CanaryStep, MAX_REPLICAS, Strategy, canary_scale_rule,
};

/// Query arguments the engine sets itself for every analysis; `args` may
/// not override them.
pub const ENGINE_ARGS: [&str; 6] = [
    "service",
    "canary",
    "stable",
    "canary_version",
    "stable_version",
    "window",
];

impl RolloutSpec {
    /// Checks every rule and builds the [`Rollout`].
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for the first rule broken, with `field` the
    /// dotted path in the file (e.g. `strategy.canary.steps[2].set_weight`)
    /// and `rule` what is required.
    pub fn into_rollout(self) -> Result<Rollout> {
        self.to_rollout()
    }

    /// As [`into_rollout`](Self::into_rollout), without consuming the spec.
    ///
    /// # Errors
    ///
    /// As [`into_rollout`](Self::into_rollout).
    pub fn to_rollout(&self) -> Result<Rollout> {
        let result = self.build();
        if let Err(Error::InvalidInput { field, .. }) = &result {
            // The rule may quote values from the file; the caller gets it in
            // the error, the log only says where.
            tracing::debug!(service = %self.service, %field, "rollout spec rejected");
        }
        result
    }

    fn build(&self) -> Result<Rollout> {
        let service = ServiceName::new(self.service.as_str()).map_err(|e| {
            Error::invalid(
                "service",
                format!("{} (got {:?})", rule_of(e), self.service),
            )
        })?;
        let release = self.release.to_release()?;
        let templates: BTreeSet<&str> = self.analysis.keys().map(String::as_str).collect();
        let strategy = self.strategy.to_strategy(&templates)?;
        let probe = self.probe.to_policy()?;
        check_args(&self.args)?;
        let mut analysis = BTreeMap::new();
        for (name, template) in &self.analysis {
            analysis.insert(name.clone(), template.to_template(name, &self.args)?);
        }
        let progress_deadline = match &self.progress_deadline {
            Some(text) => positive_duration("progress_deadline", text)?,
            None => DEFAULT_PROGRESS_DEADLINE,
        };
        let on_inconclusive = match self.on_inconclusive {
            None => InconclusivePolicy::default(),
            Some(InconclusiveSpec::Pause) => InconclusivePolicy::Pause,
            Some(InconclusiveSpec::Abort) => InconclusivePolicy::Abort,
        };
        let autoscaling = self
            .autoscaling
            .as_ref()
            .map(|a| a.to_policy("autoscaling"))
            .transpose()?;
        let rollout = Rollout {
            service,
            release,
            strategy,
            probe,
            analysis,
            progress_deadline,
            on_inconclusive,
            args: self.args.clone(),
            autoscaling,
        };
        rollout.validate()?;
        tracing::debug!(
            service = %rollout.service,
            version = %rollout.release.version,
            steps = rollout.strategy.compile(false).len(),
            "rollout spec accepted"
        );
        Ok(rollout)
    }
}

impl TryFrom<RolloutSpec> for Rollout {
    type Error = Error;

    fn try_from(spec: RolloutSpec) -> Result<Self> {
        spec.into_rollout()
    }
}

impl ReleaseSpec {
    fn to_release(&self) -> Result<Release> {
        let release = Release {
            version: self.version.clone(),
            artifact: self.artifact.clone(),
            args: self.args.clone(),
            env: self.env.clone(),
        };
        // Same paths as the file: `release.version`, `release.artifact`.
        release.validate()?;
        for (i, arg) in self.args.iter().enumerate() {
            if arg.contains('\0') {
                return Err(Error::invalid(
                    format!("release.args[{i}]"),
                    "must not contain a NUL character",
                ));
            }
        }
        for (key, value) in &self.env {
            let at = if key.is_empty() {
                "release.env".to_string()
            } else {
                format!("release.env.{key}")
            };
            if key.is_empty() || key.contains(['=', '\0']) {
                return Err(Error::invalid(
                    at,
                    "variable names must be non-empty, without '=' or NUL",
                ));
            }
            if value.contains('\0') {
                return Err(Error::invalid(at, "must not contain a NUL character"));
            }
        }
        Ok(release)
    }
}

impl StrategySpec {
    fn to_strategy(&self, templates: &BTreeSet<&str>) -> Result<Strategy> {
        match (&self.blue_green, &self.canary) {
            (Some(b), None) => b.to_blue_green(templates).map(Strategy::BlueGreen),
            (None, Some(c)) => c.to_canary(templates).map(Strategy::Canary),
            (None, None) => Err(Error::invalid(
                "strategy",
                "must set one of blue_green or canary",
            )),
            (Some(_), Some(_)) => Err(Error::invalid(
                "strategy",
                "must set only one of blue_green or canary, not both",
            )),
        }
    }
}

impl BlueGreenSpec {
    fn to_blue_green(&self, templates: &BTreeSet<&str>) -> Result<BlueGreen> {
        let at = "strategy.blue_green";
        replica_count(&format!("{at}.replicas"), self.replicas)?;
        let mut b = BlueGreen::new(self.replicas);
        if let Some(n) = self.preview_replicas {
            replica_count(&format!("{at}.preview_replicas"), n)?;
            b.preview_replicas = Some(n);
        }
        if let Some(auto) = self.auto_promotion {
            b.auto_promotion = auto;
        }
        if let Some(steps) = &self.traffic_steps {
            let path = format!("{at}.traffic_steps");
            let mut weights: Vec<Weight> = Vec::with_capacity(steps.len());
            for (i, percent) in steps.iter().enumerate() {
                let here = format!("{path}[{i}]");
                let w = weight(&here, *percent)?;
                if let Some(prev) = weights.last()
                    && w < *prev
                {
                    return Err(Error::invalid(
                        here,
                        format!(
                            "weights must not decrease (was {}, now {})",
                            prev.percent(),
                            w.percent()
                        ),
                    ));
                }
                weights.push(w);
            }
            match weights.last() {
                None => return Err(Error::invalid(path, "must have at least one step")),
                Some(last) if *last != Weight::FULL => {
                    return Err(Error::invalid(
                        path,
                        format!("must end at 100 (ends at {})", last.percent()),
                    ));
                }
                Some(_) => {}
            }
            b.traffic_steps = weights;
        }
        b.step_analysis = template_ref_opt(
            &format!("{at}.step_analysis"),
            &self.step_analysis,
            templates,
        )?;
        b.pre_promotion_analysis = template_ref_opt(
            &format!("{at}.pre_promotion_analysis"),
            &self.pre_promotion_analysis,
            templates,
        )?;
        b.post_promotion_analysis = template_ref_opt(
            &format!("{at}.post_promotion_analysis"),
            &self.post_promotion_analysis,
            templates,
        )?;
        if let Some(text) = &self.scale_down_delay {
            b.scale_down_delay = duration(&format!("{at}.scale_down_delay"), text)?;
        }
        if let Some(m) = &self.canary_match {
            b.canary_match = Some(m.to_request_match(&format!("{at}.canary_match"))?);
        }
        Ok(b)
    }
}

impl CanarySpec {
    fn to_canary(&self, templates: &BTreeSet<&str>) -> Result<Canary> {
        let at = "strategy.canary";
        replica_count(&format!("{at}.replicas"), self.replicas)?;
        let mut last = Weight::ZERO;
        let mut steps = Vec::with_capacity(self.steps.len());
        for (i, step) in self.steps.iter().enumerate() {
            let step = step.to_step(
                &format!("{at}.steps[{i}]"),
                templates,
                self.replicas,
                &mut last,
            )?;
            steps.push(step);
        }
        let mut c = Canary::new(self.replicas, steps);
        if let Some(text) = &self.scale_down_delay {
            c.scale_down_delay = duration(&format!("{at}.scale_down_delay"), text)?;
        }
        if let Some(m) = &self.canary_match {
            c.canary_match = Some(m.to_request_match(&format!("{at}.canary_match"))?);
        }
        Ok(c)
    }
}

impl CanaryStepSpec {
    fn to_step(
        &self,
        at: &str,
        templates: &BTreeSet<&str>,
        replicas: u32,
        last: &mut Weight,
    ) -> Result<CanaryStep> {
        let set: Vec<&str> = [
            ("set_weight", self.set_weight.is_some()),
            ("pause", self.pause.is_some()),
            ("analysis", self.analysis.is_some()),
            ("set_canary_scale", self.set_canary_scale.is_some()),
        ]
        .into_iter()
        .filter_map(|(k, is_set)| is_set.then_some(k))
        .collect();
        let one_of = "must have exactly one of set_weight, pause, analysis or set_canary_scale";
        let found_none = || {
            Error::invalid(
                at,
                format!("{one_of}, found none (a pause until promotion is written `pause: {{}}`)"),
            )
        };
        if set.is_empty() {
            return Err(found_none());
        }
        if set.len() > 1 {
            return Err(Error::invalid(
                at,
                format!("{one_of}, found {}", set.join(", ")),
            ));
        }
        if let Some(percent) = self.set_weight {
            let here = format!("{at}.set_weight");
            let w = weight(&here, percent)?;
            if w < *last {
                return Err(Error::invalid(
                    here,
                    format!(
                        "must not decrease (was {}, now {})",
                        last.percent(),
                        w.percent()
                    ),
                ));
            }
            *last = w;
            return Ok(CanaryStep::SetWeight(w));
        }
        if let Some(PauseSpec { duration }) = &self.pause {
            let d = duration
                .as_deref()
                .map(|text| positive_duration(&format!("{at}.pause.duration"), text))
                .transpose()?;
            return Ok(CanaryStep::Pause(d));
        }
        if let Some(a) = &self.analysis {
            let template =
                template_ref(&format!("{at}.analysis.template"), &a.template, templates)?;
            return Ok(CanaryStep::Analysis(template));
        }
        match &self.set_canary_scale {
            Some(s) => Ok(CanaryStep::SetCanaryScale(
                s.to_scale(&format!("{at}.set_canary_scale"), replicas)?,
            )),
            None => Err(found_none()),
        }
    }
}

impl CanaryScaleSpec {
    /// The scale, for a strategy of `replicas` replicas.
    fn to_scale(&self, at: &str, replicas: u32) -> Result<CanaryScale> {
        match (self.replicas, self.weight, self.match_traffic_weight) {
            (Some(n), None, None) => {
                at_least_one(&format!("{at}.replicas"), n)?;
                if n > replicas {
                    return Err(Error::invalid(
                        format!("{at}.replicas"),
                        canary_scale_rule(n, replicas),
                    ));
                }
                Ok(CanaryScale::Replicas(n))
            }
            (None, Some(percent), None) => Ok(CanaryScale::Weight(weight(
                &format!("{at}.weight"),
                percent,
            )?)),
            (None, None, Some(true)) => Ok(CanaryScale::MatchTrafficWeight),
            (None, None, Some(false)) => Err(Error::invalid(
                format!("{at}.match_traffic_weight"),
                "must be true when given (set replicas or weight instead)",
            )),
            _ => Err(Error::invalid(
                at,
                "must have exactly one of replicas, weight or match_traffic_weight",
            )),
        }
    }
}

impl RequestMatchSpec {
    fn to_request_match(&self, at: &str) -> Result<RequestMatch> {
        match (&self.header, &self.cookie) {
            (Some(h), None) => {
                let (name, value) = h.checked(&format!("{at}.header"), false)?;
                Ok(RequestMatch::Header { name, value })
            }
            (None, Some(c)) => {
                let (name, value) = c.checked(&format!("{at}.cookie"), true)?;
                Ok(RequestMatch::Cookie { name, value })
            }
            _ => Err(Error::invalid(
                at,
                "must have exactly one of header or cookie",
            )),
        }
    }
}

impl NameValueSpec {
    /// Names must be HTTP tokens and values free of control characters, so
    /// no router can be made to emit a broken or injected header.
    fn checked(&self, at: &str, cookie: bool) -> Result<(String, String)> {
        let is_tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        if self.name.is_empty() || !self.name.chars().all(is_tchar) {
            return Err(Error::invalid(
                format!("{at}.name"),
                format!(
                    "must be a non-empty HTTP token (letters, digits and !#$%&'*+-.^_`|~), got {:?}",
                    self.name
                ),
            ));
        }
        if self.value.chars().any(|c| c.is_control()) || (cookie && self.value.contains(';')) {
            return Err(Error::invalid(
                format!("{at}.value"),
                if cookie {
                    "must not contain control characters or ';'"
                } else {
                    "must not contain control characters"
                },
            ));
        }
        Ok((self.name.clone(), self.value.clone()))
    }
}

impl ProbeSpec {
    fn to_policy(&self) -> Result<ProbePolicy> {
        let mut p = ProbePolicy::default();
        if let Some(text) = &self.initial_delay {
            p.initial_delay = duration("probe.initial_delay", text)?;
        }
        if let Some(text) = &self.period {
            p.period = positive_duration("probe.period", text)?;
        }
        if let Some(text) = &self.timeout {
            p.timeout = positive_duration("probe.timeout", text)?;
        }
        if let Some(n) = self.success_threshold {
            at_least_one("probe.success_threshold", n)?;
            p.success_threshold = n;
        }
        if let Some(n) = self.failure_threshold {
            at_least_one("probe.failure_threshold", n)?;
            p.failure_threshold = n;
        }
        // An attempt that may outlast the period would make the period a
        // lie: attempts run one after another, so they would come a timeout
        // apart, not a period apart.
        if p.timeout > p.period {
            let (timeout, period) = (format_duration(p.timeout), format_duration(p.period));
            let rule = match &self.timeout {
                Some(_) => {
                    format!("must not be longer than probe.period ({period}), got {timeout}")
                }
                None => format!(
                    "the default of {timeout} is longer than probe.period ({period}); set probe.timeout to at most the period"
                ),
            };
            return Err(Error::invalid("probe.timeout", rule));
        }
        Ok(p)
    }
}

impl AnalysisTemplateSpec {
    fn to_template(&self, name: &str, args: &BTreeMap<String, String>) -> Result<AnalysisTemplate> {
        if name.trim().is_empty() {
            return Err(Error::invalid(
                "analysis",
                "template names must not be empty",
            ));
        }
        let at = format!("analysis.{name}");
        if self.metrics.is_empty() {
            return Err(Error::invalid(
                format!("{at}.metrics"),
                "must have at least one metric",
            ));
        }
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        let mut metrics = Vec::with_capacity(self.metrics.len());
        for (i, m) in self.metrics.iter().enumerate() {
            let here = format!("{at}.metrics[{i}]");
            metrics.push(m.to_metric(&here, args)?);
            if let Some(first) = seen.insert(m.name.as_str(), i) {
                return Err(Error::invalid(
                    format!("{here}.name"),
                    format!(
                        "{:?} is already the name of {at}.metrics[{first}]; names must be unique",
                        m.name
                    ),
                ));
            }
        }
        Ok(AnalysisTemplate::new(name, metrics))
    }
}

impl MetricSpec {
    fn to_metric(&self, at: &str, args: &BTreeMap<String, String>) -> Result<AnalysisMetric> {
        if self.name.trim().is_empty() {
            return Err(Error::invalid(format!("{at}.name"), "must not be empty"));
        }
        if self.query.trim().is_empty() {
            return Err(Error::invalid(format!("{at}.query"), "must not be empty"));
        }
        // Render with placeholder values so that a typo in `{{…}}` is
        // refused now, not at the first measurement in the middle of a rollout.
        let known: BTreeMap<String, String> = ENGINE_ARGS
            .iter()
            .map(|k| (*k).to_string())
            .chain(args.keys().cloned())
            .map(|k| (k, String::new()))
            .collect();
        render_query(&self.query, &known).map_err(|e| {
            Error::invalid(
                format!("{at}.query"),
                format!(
                    "{}; known arguments are {} and the keys of args",
                    rule_of(e),
                    ENGINE_ARGS.join(", ")
                ),
            )
        })?;
        let mut m = AnalysisMetric::new(self.name.clone(), self.query.clone());
        if let Some(text) = &self.window {
            m.window = Some(positive_duration(&format!("{at}.window"), text)?);
        }
        if let Some(text) = &self.interval {
            m.interval = duration(&format!("{at}.interval"), text)?;
        }
        if let Some(n) = self.count {
            at_least_one(&format!("{at}.count"), n)?;
            m.count = n;
        }
        if m.count > 1 && m.interval.is_zero() {
            return Err(Error::invalid(
                format!("{at}.interval"),
                "must be greater than 0 when count is more than 1",
            ));
        }
        if let Some(text) = &self.initial_delay {
            m.initial_delay = duration(&format!("{at}.initial_delay"), text)?;
        }
        if let Some(text) = &self.success_condition {
            m.success_condition = Some(condition(&format!("{at}.success_condition"), text)?);
        }
        if let Some(text) = &self.failure_condition {
            m.failure_condition = Some(condition(&format!("{at}.failure_condition"), text)?);
        }
        if m.success_condition.is_none() && m.failure_condition.is_none() {
            return Err(Error::invalid(
                at,
                "must have a success_condition, a failure_condition or both",
            ));
        }
        if let Some(n) = self.failure_limit {
            m.failure_limit = n;
        }
        if let Some(n) = self.inconclusive_limit {
            m.inconclusive_limit = n;
        }
        if let Some(n) = self.consecutive_error_limit {
            m.consecutive_error_limit = n;
        }
        Ok(m)
    }
}

fn check_args(args: &BTreeMap<String, String>) -> Result<()> {
    for key in args.keys() {
        if key.is_empty() {
            return Err(Error::invalid("args", "argument names must not be empty"));
        }
        let at = format!("args.{key}");
        if key.trim() != key || key.contains(['{', '}']) {
            return Err(Error::invalid(
                at,
                "argument names must not have surrounding spaces or braces",
            ));
        }
        if ENGINE_ARGS.contains(&key.as_str()) {
            return Err(Error::invalid(
                at,
                "is set by the engine for every query and cannot be overridden",
            ));
        }
    }
    Ok(())
}

/// The rule of an [`Error::InvalidInput`] from a domain parser, whose own
/// field name (`condition`, `weight`) means nothing in the file.
fn rule_of(e: Error) -> String {
    match e {
        Error::InvalidInput { rule, .. } => rule,
        other => other.to_string(),
    }
}

fn at_least_one(at: &str, n: u32) -> Result<()> {
    if n < 1 {
        return Err(Error::invalid(at, "must be at least 1"));
    }
    Ok(())
}

/// A replica count: at least 1 and at most [`MAX_REPLICAS`].
fn replica_count(at: &str, n: u32) -> Result<()> {
    at_least_one(at, n)?;
    if n > MAX_REPLICAS {
        return Err(Error::invalid(
            at,
            format!("must be at most {MAX_REPLICAS}, got {n}"),
        ));
    }
    Ok(())
}

fn weight(at: &str, percent: u32) -> Result<Weight> {
    u8::try_from(percent)
        .ok()
        .and_then(|p| Weight::new(p).ok())
        .ok_or_else(|| Error::invalid(at, format!("must be between 0 and 100, got {percent}")))
}

fn positive_duration(at: &str, text: &str) -> Result<Duration> {
    let d = duration(at, text)?;
    if d.is_zero() {
        return Err(Error::invalid(at, "must be greater than 0"));
    }
    Ok(d)
}

fn condition(at: &str, text: &str) -> Result<Condition> {
    text.parse::<Condition>().map_err(|e| {
        Error::invalid(
            at,
            format!("{}; write it like < 0.01, <= 200ms or >= 99%", rule_of(e)),
        )
    })
}

fn template_ref(at: &str, name: &str, templates: &BTreeSet<&str>) -> Result<String> {
    if name.trim().is_empty() {
        return Err(Error::invalid(at, "must name an analysis template"));
    }
    if !templates.contains(name) {
        return Err(Error::invalid(
            at,
            format!("refers to analysis template {name:?}, which is not defined under analysis"),
        ));
    }
    Ok(name.to_string())
}

fn template_ref_opt(
    at: &str,
    name: &Option<String>,
    templates: &BTreeSet<&str>,
) -> Result<Option<String>> {
    name.as_deref()
        .map(|n| template_ref(at, n, templates))
        .transpose()
}

// The way back: every field is written out, defaults included, so a spec
// written from a rollout does not change meaning if a default ever does.

impl From<&Rollout> for RolloutSpec {
    fn from(r: &Rollout) -> Self {
        RolloutSpec {
            service: r.service.to_string(),
            release: ReleaseSpec {
                version: r.release.version.clone(),
                artifact: r.release.artifact.clone(),
                args: r.release.args.clone(),
                env: r.release.env.clone(),
            },
            strategy: StrategySpec::from(&r.strategy),
            probe: ProbeSpec::from(&r.probe),
            analysis: r
                .analysis
                .iter()
                .map(|(name, t)| (name.clone(), AnalysisTemplateSpec::from(t)))
                .collect(),
            progress_deadline: Some(format_duration(r.progress_deadline)),
            on_inconclusive: Some(match r.on_inconclusive {
                InconclusivePolicy::Pause => InconclusiveSpec::Pause,
                InconclusivePolicy::Abort => InconclusiveSpec::Abort,
            }),
            args: r.args.clone(),
            autoscaling: r.autoscaling.as_ref().map(Into::into),
        }
    }
}

impl From<&Strategy> for StrategySpec {
    fn from(s: &Strategy) -> Self {
        match s {
            Strategy::BlueGreen(b) => StrategySpec {
                blue_green: Some(BlueGreenSpec {
                    replicas: b.replicas,
                    preview_replicas: b.preview_replicas,
                    auto_promotion: Some(b.auto_promotion),
                    traffic_steps: Some(
                        b.traffic_steps
                            .iter()
                            .map(|w| u32::from(w.percent()))
                            .collect(),
                    ),
                    step_analysis: b.step_analysis.clone(),
                    pre_promotion_analysis: b.pre_promotion_analysis.clone(),
                    post_promotion_analysis: b.post_promotion_analysis.clone(),
                    scale_down_delay: Some(format_duration(b.scale_down_delay)),
                    canary_match: b.canary_match.as_ref().map(RequestMatchSpec::from),
                }),
                canary: None,
            },
            Strategy::Canary(c) => StrategySpec {
                blue_green: None,
                canary: Some(CanarySpec {
                    replicas: c.replicas,
                    steps: c.steps.iter().map(CanaryStepSpec::from).collect(),
                    scale_down_delay: Some(format_duration(c.scale_down_delay)),
                    canary_match: c.canary_match.as_ref().map(RequestMatchSpec::from),
                }),
            },
        }
    }
}

impl From<&CanaryStep> for CanaryStepSpec {
    fn from(s: &CanaryStep) -> Self {
        match s {
            CanaryStep::SetWeight(w) => CanaryStepSpec::set_weight(u32::from(w.percent())),
            CanaryStep::Pause(d) => CanaryStepSpec::pause(d.map(format_duration)),
            CanaryStep::Analysis(t) => CanaryStepSpec::analysis(t.clone()),
            CanaryStep::SetCanaryScale(scale) => CanaryStepSpec::set_canary_scale(match scale {
                CanaryScale::Replicas(n) => CanaryScaleSpec {
                    replicas: Some(*n),
                    ..Default::default()
                },
                CanaryScale::Weight(w) => CanaryScaleSpec {
                    weight: Some(u32::from(w.percent())),
                    ..Default::default()
                },
                CanaryScale::MatchTrafficWeight => CanaryScaleSpec {
                    match_traffic_weight: Some(true),
                    ..Default::default()
                },
            }),
        }
    }
}

impl From<&RequestMatch> for RequestMatchSpec {
    fn from(m: &RequestMatch) -> Self {
        match m {
            RequestMatch::Header { name, value } => RequestMatchSpec {
                header: Some(NameValueSpec {
                    name: name.clone(),
                    value: value.clone(),
                }),
                cookie: None,
            },
            RequestMatch::Cookie { name, value } => RequestMatchSpec {
                header: None,
                cookie: Some(NameValueSpec {
                    name: name.clone(),
                    value: value.clone(),
                }),
            },
        }
    }
}

impl From<&ProbePolicy> for ProbeSpec {
    fn from(p: &ProbePolicy) -> Self {
        ProbeSpec {
            initial_delay: Some(format_duration(p.initial_delay)),
            period: Some(format_duration(p.period)),
            timeout: Some(format_duration(p.timeout)),
            success_threshold: Some(p.success_threshold),
            failure_threshold: Some(p.failure_threshold),
        }
    }
}

impl From<&AnalysisTemplate> for AnalysisTemplateSpec {
    fn from(t: &AnalysisTemplate) -> Self {
        AnalysisTemplateSpec {
            metrics: t.metrics.iter().map(MetricSpec::from).collect(),
        }
    }
}

impl From<&AnalysisMetric> for MetricSpec {
    fn from(m: &AnalysisMetric) -> Self {
        MetricSpec {
            name: m.name.clone(),
            query: m.query.clone(),
            window: m.window.map(format_duration),
            interval: Some(format_duration(m.interval)),
            count: Some(m.count),
            initial_delay: Some(format_duration(m.initial_delay)),
            success_condition: m.success_condition.map(|c| c.to_string()),
            failure_condition: m.failure_condition.map(|c| c.to_string()),
            failure_limit: Some(m.failure_limit),
            inconclusive_limit: Some(m.inconclusive_limit),
            consecutive_error_limit: Some(m.consecutive_error_limit),
        }
    }
}
