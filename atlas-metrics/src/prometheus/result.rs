//! Prometheus query results, typed, and the API's response envelope.

use std::collections::BTreeMap;

use atlas_core::{Error, Measurement, Result};
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::Value;

use crate::client::ApiClient;

/// One sample: a Unix timestamp in seconds and a value (NaN and ±Inf kept
/// as Prometheus sent them).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Seconds since the Unix epoch.
    pub timestamp: f64,
    /// The value.
    pub value: f64,
}

/// One series of an instant vector.
#[derive(Debug, Clone, PartialEq)]
pub struct InstantSeries {
    /// The series' labels (with `__name__` when Prometheus kept it).
    pub labels: BTreeMap<String, String>,
    /// Its sample.
    pub sample: Sample,
}

/// One series of a range matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct RangeSeries {
    /// The series' labels.
    pub labels: BTreeMap<String, String>,
    /// Its samples in time order.
    pub samples: Vec<Sample>,
}

/// What a query returned, by Prometheus result type.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum QueryResult {
    /// A scalar, e.g. from `scalar(...)` or `1 + 1`.
    Scalar(Sample),
    /// A string literal.
    String {
        /// Evaluation time, Unix seconds.
        timestamp: f64,
        /// The string.
        value: String,
    },
    /// An instant vector: zero or more series with one sample each.
    Vector(Vec<InstantSeries>),
    /// A range matrix: zero or more series with many samples each.
    Matrix(Vec<RangeSeries>),
}

impl QueryResult {
    /// One number for analysis, as described on [`MatrixReduction`].
    ///
    /// # Errors
    /// [`Error::InvalidInput`] on `query` when a vector or matrix holds more
    /// than one series, or a string is not a number.
    pub fn to_measurement(&self, reduction: MatrixReduction) -> Result<Measurement> {
        let several = |n: usize| {
            Error::invalid(
                "query",
                format!(
                    "returned {n} series where analysis needs one; aggregate it, e.g. sum(...) or max(...)"
                ),
            )
        };
        Ok(match self {
            QueryResult::Scalar(s) => Measurement::from_f64(s.value),
            QueryResult::String { value, .. } => {
                let v: f64 = parse_number(value).ok_or_else(|| {
                    Error::invalid(
                        "query",
                        format!("returned the string {value:?}, not a number"),
                    )
                })?;
                Measurement::from_f64(v)
            }
            QueryResult::Vector(series) => match series.as_slice() {
                [] => Measurement::NoData,
                [one] => Measurement::from_f64(one.sample.value),
                many => return Err(several(many.len())),
            },
            QueryResult::Matrix(series) => match series.as_slice() {
                [] => Measurement::NoData,
                [one] => reduce(&one.samples, reduction),
                many => return Err(several(many.len())),
            },
        })
    }

    /// Every finite value in the result, series after series.
    pub fn finite_values(&self) -> Vec<f64> {
        let values: Vec<f64> = match self {
            QueryResult::Scalar(s) => vec![s.value],
            QueryResult::String { value, .. } => parse_number(value).into_iter().collect(),
            QueryResult::Vector(series) => series.iter().map(|s| s.sample.value).collect(),
            QueryResult::Matrix(series) => series
                .iter()
                .flat_map(|s| s.samples.iter().map(|x| x.value))
                .collect(),
        };
        values.into_iter().filter(|v| v.is_finite()).collect()
    }
}

fn reduce(samples: &[Sample], reduction: MatrixReduction) -> Measurement {
    let finite: Vec<f64> = samples
        .iter()
        .map(|s| s.value)
        .filter(|v| v.is_finite())
        .collect();
    if finite.is_empty() {
        return Measurement::NoData;
    }
    let v = match reduction {
        MatrixReduction::Last => finite[finite.len() - 1],
        MatrixReduction::Mean => finite.iter().sum::<f64>() / finite.len() as f64,
        MatrixReduction::Max => finite.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        MatrixReduction::Min => finite.iter().copied().fold(f64::INFINITY, f64::min),
    };
    Measurement::from_f64(v)
}

/// Prometheus writes `NaN`, `+Inf` and `-Inf`; Rust's parser takes those
/// case-insensitively, but is explicit here to not depend on it.
fn parse_number(s: &str) -> Option<f64> {
    match s.trim() {
        "NaN" => Some(f64::NAN),
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        other => other.parse().ok(),
    }
}

#[derive(Deserialize)]
struct Envelope {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct Data {
    #[serde(rename = "resultType")]
    result_type: String,
    result: Value,
}

#[derive(Deserialize)]
struct RawInstant {
    #[serde(default)]
    metric: BTreeMap<String, String>,
    #[serde(default)]
    value: Option<(f64, String)>,
    #[serde(default)]
    histogram: Option<Value>,
}

#[derive(Deserialize)]
struct RawRange {
    #[serde(default)]
    metric: BTreeMap<String, String>,
    #[serde(default)]
    values: Vec<(f64, String)>,
    #[serde(default)]
    histograms: Option<Value>,
}

/// Turns an HTTP answer from `/api/v1/query[_range]` into a result or an
/// error of the right category.
pub(super) fn parse_response(
    status: StatusCode,
    body: &[u8],
    api: &ApiClient,
) -> Result<QueryResult> {
    let backend = api.backend;
    let envelope: Envelope = match serde_json::from_slice(body) {
        Ok(e) => e,
        Err(e) => {
            if !status.is_success() {
                // A proxy in front of Prometheus, or a non-API path: no JSON.
                return Err(api.status_error(status, &String::from_utf8_lossy(body), "query"));
            }
            return Err(Error::backend_with(
                backend,
                "the answer is not a Prometheus API response",
                e,
            ));
        }
    };
    if envelope.status != "success" {
        let kind = envelope.error_type.unwrap_or_default();
        let message = envelope.error.unwrap_or_default();
        let text = format!("{kind}: {message}");
        return Err(match kind.as_str() {
            "bad_data" => Error::invalid("query", message),
            "timeout" | "canceled" | "unavailable" => Error::transient(backend, text),
            _ if status.is_server_error() => Error::transient(backend, text),
            _ if status.is_client_error() => api.status_error(status, &text, "query"),
            _ => Error::backend(backend, text),
        });
    }
    if !status.is_success() {
        return Err(api.status_error(status, "", "query"));
    }
    let data = envelope
        .data
        .ok_or_else(|| Error::backend(backend, "a success answer without data"))?;
    let bad = |what: &str, e: serde_json::Error| {
        Error::backend_with(backend, format!("malformed {what} result"), e)
    };
    let sample = |(t, v): (f64, String)| -> Result<Sample> {
        let value = parse_number(&v).ok_or_else(|| {
            Error::backend(backend, format!("sample value {v:?} is not a number"))
        })?;
        Ok(Sample {
            timestamp: t,
            value,
        })
    };
    let native = || {
        Error::invalid(
            "query",
            "returned native histograms, which are not numbers; use histogram_quantile(...) or histogram_sum(...)",
        )
    };
    match data.result_type.as_str() {
        "scalar" => {
            let raw: (f64, String) =
                serde_json::from_value(data.result).map_err(|e| bad("scalar", e))?;
            Ok(QueryResult::Scalar(sample(raw)?))
        }
        "string" => {
            let (timestamp, value): (f64, String) =
                serde_json::from_value(data.result).map_err(|e| bad("string", e))?;
            Ok(QueryResult::String { timestamp, value })
        }
        "vector" => {
            let raw: Vec<RawInstant> =
                serde_json::from_value(data.result).map_err(|e| bad("vector", e))?;
            raw.into_iter()
                .map(|r| {
                    if r.histogram.is_some() {
                        return Err(native());
                    }
                    let value = r.value.ok_or_else(|| {
                        Error::backend(backend, "a vector series without a value")
                    })?;
                    Ok(InstantSeries {
                        labels: r.metric,
                        sample: sample(value)?,
                    })
                })
                .collect::<Result<Vec<_>>>()
                .map(QueryResult::Vector)
        }
        "matrix" => {
            let raw: Vec<RawRange> =
                serde_json::from_value(data.result).map_err(|e| bad("matrix", e))?;
            raw.into_iter()
                .map(|r| {
                    if r.histograms.is_some() {
                        return Err(native());
                    }
                    Ok(RangeSeries {
                        labels: r.metric,
                        samples: r.values.into_iter().map(sample).collect::<Result<_>>()?,
                    })
                })
                .collect::<Result<Vec<_>>>()
                .map(QueryResult::Matrix)
        }
        other => Err(Error::backend(
            backend,
            format!("unknown result type {other:?}"),
        )),
    }
}

/// How [`PrometheusProvider`](super::PrometheusProvider) turns a query result into one number
/// when it measures.
///
/// A scalar is its value; a string is parsed as a number; a vector must hold
/// exactly one series (aggregate with `sum(...)` etc. otherwise); a matrix
/// (a range selector such as `x[5m]` sent as an instant query) must hold
/// exactly one series, reduced as chosen here. An empty result, NaN and
/// ±Inf are [`Measurement::NoData`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum MatrixReduction {
    /// The most recent sample (the default).
    #[default]
    Last,
    /// The arithmetic mean of the samples.
    Mean,
    /// The largest sample.
    Max,
    /// The smallest sample.
    Min,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn api() -> ApiClient {
        ApiClient::new(
            "prometheus",
            "prometheus.url",
            "http://127.0.0.1:9090",
            None,
            None,
            Duration::from_secs(1),
        )
        .unwrap()
    }

    fn parse(status: u16, body: &str) -> Result<QueryResult> {
        parse_response(
            StatusCode::from_u16(status).unwrap(),
            body.as_bytes(),
            &api(),
        )
    }

    fn m(r: &QueryResult) -> Measurement {
        r.to_measurement(MatrixReduction::Last).unwrap()
    }

    #[test]
    fn every_result_type_parses() {
        let scalar = parse(
            200,
            r#"{"status":"success","data":{"resultType":"scalar","result":[1700000000.5,"0.25"]}}"#,
        )
        .unwrap();
        assert_eq!(
            scalar,
            QueryResult::Scalar(Sample {
                timestamp: 1_700_000_000.5,
                value: 0.25
            })
        );
        assert_eq!(m(&scalar), Measurement::Value(0.25));

        let string = parse(
            200,
            r#"{"status":"success","data":{"resultType":"string","result":[1,"12.5"]}}"#,
        )
        .unwrap();
        assert_eq!(m(&string), Measurement::Value(12.5));
        let word = parse(
            200,
            r#"{"status":"success","data":{"resultType":"string","result":[1,"hi"]}}"#,
        )
        .unwrap();
        assert!(word.to_measurement(MatrixReduction::Last).is_err());

        let vector = parse(200, r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"job":"a"},"value":[1,"3"]}]}}"#).unwrap();
        assert_eq!(m(&vector), Measurement::Value(3.0));
        let QueryResult::Vector(series) = &vector else {
            panic!()
        };
        assert_eq!(series[0].labels["job"], "a");

        let matrix = parse(200, r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":[[1,"1"],[2,"NaN"],[3,"4"],[4,"+Inf"]]}]}}"#).unwrap();
        assert_eq!(m(&matrix), Measurement::Value(4.0));
        assert_eq!(
            matrix.to_measurement(MatrixReduction::Mean).unwrap(),
            Measurement::Value(2.5)
        );
        assert_eq!(
            matrix.to_measurement(MatrixReduction::Max).unwrap(),
            Measurement::Value(4.0)
        );
        assert_eq!(
            matrix.to_measurement(MatrixReduction::Min).unwrap(),
            Measurement::Value(1.0)
        );
        assert_eq!(matrix.finite_values(), vec![1.0, 4.0]);
    }

    #[test]
    fn nan_inf_and_empty_are_no_data() {
        for body in [
            r#"{"status":"success","data":{"resultType":"scalar","result":[1,"NaN"]}}"#,
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"+Inf"]}]}}"#,
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"-Inf"]}]}}"#,
            r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#,
            r#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#,
            r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":[[1,"NaN"]]}]}}"#,
        ] {
            assert_eq!(m(&parse(200, body).unwrap()), Measurement::NoData, "{body}");
        }
    }

    #[test]
    fn several_series_are_refused_with_advice() {
        let two = parse(200, r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"i":"1"},"value":[1,"1"]},{"metric":{"i":"2"},"value":[1,"2"]}]}}"#).unwrap();
        let e = two.to_measurement(MatrixReduction::Last).unwrap_err();
        assert!(
            e.to_string().contains("2 series") && e.to_string().contains("sum("),
            "{e}"
        );
    }

    #[test]
    fn errors_map_to_categories() {
        use atlas_core::ErrorKind::*;
        let cases = [
            (
                400,
                r#"{"status":"error","errorType":"bad_data","error":"parse error"}"#,
                InvalidInput,
            ),
            (
                422,
                r#"{"status":"error","errorType":"execution","error":"many-to-many"}"#,
                InvalidInput,
            ),
            (
                503,
                r#"{"status":"error","errorType":"unavailable","error":"shutting down"}"#,
                Transient,
            ),
            (
                503,
                r#"{"status":"error","errorType":"timeout","error":"query timed out"}"#,
                Transient,
            ),
            (
                500,
                r#"{"status":"error","errorType":"internal","error":"boom"}"#,
                Transient,
            ),
            (502, "<html>bad gateway</html>", Transient),
            (401, "unauthorized", Backend),
            (403, "forbidden", Backend),
            (404, "404 page not found", Backend),
            (200, "not json", Backend),
            (
                200,
                r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"histogram":[1,{}]}]}}"#,
                InvalidInput,
            ),
        ];
        for (status, body, kind) in cases {
            let e = parse(status, body).unwrap_err();
            assert_eq!(e.kind(), kind, "{status} {body}: {e}");
        }
        let e = parse(
            400,
            r#"{"status":"error","errorType":"bad_data","error":"1:4: parse error"}"#,
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "invalid query: 1:4: parse error");
    }
}
