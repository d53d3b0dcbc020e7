//! JSON logs for Loki: a `tracing` layer that writes one JSON object per
//! event, with stable field names that LogQL queries can rely on.
//!
//! Every line has:
//!
//! | field | what |
//! |---|---|
//! | `ts` | the time, RFC 3339 UTC with milliseconds |
//! | `level` | `ERROR`, `WARN`, `INFO`, `DEBUG`, `TRACE` |
//! | `target` | the module that logged it, e.g. `atlas_core::engine::log` |
//! | `event` | the message in snake case: `rollout_started`, `step_finished`, `traffic_split_changed`, `rollout_rolled_back`, … |
//! | `message` | the message as written |
//!
//! and, when the event or one of its enclosing spans carries them:
//!
//! | field | from |
//! |---|---|
//! | `service` | the `service` field (the service being rolled out) |
//! | `rollout` | the `rollout` field, or the `id` of the enclosing `rollout` span |
//! | `slot` | the `slot` field |
//! | `step` | the `step` field (the step's description) |
//!
//! Every other field of the event and its spans goes under `fields`
//! (the event's own win over its spans', inner spans over outer), so
//! the top level never changes shape. The innermost span's name is
//! `span`.
//!
//! ```no_run
//! atlas_metrics::logging::init_json_logs("info,atlas_core=debug").unwrap();
//! tracing::info!(service = "checkout", "rollout started");
//! // {"ts":"…","level":"INFO","target":"…","event":"rollout_started","message":"rollout started","service":"checkout"}
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::sync::Mutex;
use std::time::SystemTime;

use atlas_core::{Error, Result};
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// The top-level fields every query may use.
pub const STABLE_FIELDS: [&str; 5] = ["service", "rollout", "slot", "step", "event"];

/// Fields collected from an event or a span.
#[derive(Default, Clone)]
struct Fields(BTreeMap<String, Value>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(
            field.name().to_string(),
            Value::String(format!("{value:?}")),
        );
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().to_string(), Value::String(value.to_string()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_string(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_string(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_string(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_string(), value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0
            .insert(field.name().to_string(), Value::String(value.to_string()));
    }
}

/// `rollout started` → `rollout_started`: lower case, runs of anything
/// but letters and digits become one `_`.
pub fn event_name(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for c in message.chars() {
        if c.is_alphanumeric() {
            out.extend(c.to_lowercase());
        } else if !out.ends_with('_') && !out.is_empty() {
            out.push('_');
        }
    }
    while out.ends_with('_') {
        out.pop();
    }
    out
}

/// The JSON layer (see the module docs); writes through `W`.
pub struct JsonLogLayer<W> {
    writer: Mutex<W>,
}

impl<W> fmt::Debug for JsonLogLayer<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JsonLogLayer").finish_non_exhaustive()
    }
}

impl<W: Write + Send + 'static> JsonLogLayer<W> {
    /// A layer writing one line per event to `writer`.
    pub fn new(writer: W) -> Self {
        JsonLogLayer {
            writer: Mutex::new(writer),
        }
    }
}

impl<S, W> Layer<S> for JsonLogLayer<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: Write + Send + 'static,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            let mut ext = span.extensions_mut();
            if let Some(fields) = ext.get_mut::<Fields>() {
                values.record(fields);
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut own = Fields::default();
        event.record(&mut own);
        // Outer spans first, so inner spans and the event override them.
        let mut merged: BTreeMap<String, Value> = BTreeMap::new();
        let mut innermost = None;
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(fields) = span.extensions().get::<Fields>() {
                    for (k, v) in &fields.0 {
                        // The engine's `rollout` span names the rollout `id`.
                        let key = if span.name() == "rollout" && k == "id" {
                            "rollout".to_string()
                        } else {
                            k.clone()
                        };
                        merged.insert(key, v.clone());
                    }
                }
                innermost = Some(span.name());
            }
        }
        merged.extend(own.0);
        let message = match merged.remove("message") {
            Some(Value::String(s)) => s,
            Some(other) => other.to_string(),
            None => String::new(),
        };
        let meta = event.metadata();
        let mut line = Map::new();
        line.insert(
            "ts".into(),
            humantime::format_rfc3339_millis(SystemTime::now())
                .to_string()
                .into(),
        );
        line.insert("level".into(), meta.level().as_str().into());
        line.insert("target".into(), meta.target().into());
        line.insert("event".into(), event_name(&message).into());
        line.insert("message".into(), message.into());
        for key in ["service", "rollout", "slot", "step"] {
            if let Some(v) = merged.remove(key) {
                let v = match v {
                    Value::String(s) => Value::String(s),
                    other => Value::String(other.to_string()),
                };
                line.insert(key.into(), v);
            }
        }
        if let Some(name) = innermost {
            line.insert("span".into(), name.into());
        }
        if !merged.is_empty() {
            line.insert("fields".into(), Value::Object(merged.into_iter().collect()));
        }
        let mut text = Value::Object(line).to_string();
        text.push('\n');
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        // A log line that cannot be written has nowhere to be reported.
        let _ = w.write_all(text.as_bytes());
        let _ = w.flush();
    }
}

/// Installs a global subscriber writing JSON lines to standard output,
/// filtered by `filter` (`RUST_LOG` syntax; `RUST_LOG` itself wins when
/// set).
///
/// # Errors
/// [`Error::InvalidInput`] on `logging.filter` for a filter that does not
/// parse; [`Error::Precondition`] when a global subscriber is already set.
pub fn init_json_logs(filter: &str) -> Result<()> {
    use tracing_subscriber::layer::SubscriberExt;
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.trim().is_empty() => env,
        _ => filter.to_string(),
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .map_err(|e| Error::invalid("logging.filter", e.to_string()))?;
    let subscriber = tracing_subscriber::registry()
        .with(filter)
        .with(JsonLogLayer::new(std::io::stdout()));
    tracing::subscriber::set_global_default(subscriber).map_err(|e| {
        Error::precondition(format!("a global tracing subscriber is already set: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_names_are_snake_case() {
        assert_eq!(event_name("rollout started"), "rollout_started");
        assert_eq!(
            event_name("Traffic split changed!"),
            "traffic_split_changed"
        );
        assert_eq!(
            event_name("  hook ran: pre-deploy  "),
            "hook_ran_pre_deploy"
        );
        assert_eq!(event_name(""), "");
    }
}
