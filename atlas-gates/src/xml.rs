//! A thin walk over an XML document with quick-xml, shared by the JUnit
//! and Cobertura parsers: every element's start (with its attributes) and
//! end, in order, and a typed error for anything that is not well-formed,
//! including a document that stops before its root element closes.

use std::collections::BTreeMap;

use quick_xml::Reader;
use quick_xml::events::{BytesStart, Event};

use crate::error::{Error, Result};

/// One element start: its local name and attributes (unescaped).
pub(crate) struct Element {
    pub(crate) name: String,
    pub(crate) attrs: BTreeMap<String, String>,
}

impl Element {
    /// The attribute `name` parsed as `T`; `None` when absent.
    pub(crate) fn parsed<T: std::str::FromStr>(
        &self,
        name: &str,
        bad: impl Fn(String) -> Error,
    ) -> Result<Option<T>> {
        match self.attrs.get(name) {
            None => Ok(None),
            Some(v) => v.trim().parse().map(Some).map_err(|_| {
                bad(format!(
                    "<{}> attribute {name}={v:?} is not a number",
                    self.name
                ))
            }),
        }
    }
}

/// What the walk reports.
pub(crate) enum Visit {
    /// An element opened (an empty one, `<a/>`, is followed by its end).
    Start(Element),
    /// An element closed.
    End(String),
}

fn element(e: &BytesStart<'_>, bad: &impl Fn(String) -> Error) -> Result<Element> {
    let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
    let mut attrs = BTreeMap::new();
    for a in e.attributes() {
        let a = a.map_err(|err| bad(format!("<{name}>: bad attribute: {err}")))?;
        let key = String::from_utf8_lossy(a.key.local_name().as_ref()).into_owned();
        let value = a
            .unescape_value()
            .map_err(|err| bad(format!("<{name}> attribute {key}: {err}")))?
            .into_owned();
        attrs.insert(key, value);
    }
    Ok(Element { name, attrs })
}

/// Walks `text`, calling `visit` for every element start and end. Errors
/// are [`Error::Malformed`] in `format`, naming `origin` and the byte
/// offset.
pub(crate) fn walk(
    text: &str,
    format: &'static str,
    origin: &str,
    mut visit: impl FnMut(Visit) -> Result<()>,
) -> Result<()> {
    let bad = |detail: String| Error::malformed(format, origin, detail);
    let mut reader = Reader::from_str(text);
    let mut depth = 0usize;
    let mut seen_root = false;
    loop {
        let position = reader.buffer_position();
        let event = reader
            .read_event()
            .map_err(|e| bad(format!("at byte {position}: {e}")))?;
        match event {
            Event::Start(e) => {
                if depth == 0 && seen_root {
                    return Err(bad(format!("at byte {position}: a second root element")));
                }
                seen_root = true;
                depth += 1;
                visit(Visit::Start(element(&e, &bad)?))?;
            }
            Event::Empty(e) => {
                if depth == 0 && seen_root {
                    return Err(bad(format!("at byte {position}: a second root element")));
                }
                seen_root = true;
                let el = element(&e, &bad)?;
                let name = el.name.clone();
                visit(Visit::Start(el))?;
                visit(Visit::End(name))?;
            }
            Event::End(e) => {
                depth = depth.saturating_sub(1);
                visit(Visit::End(
                    String::from_utf8_lossy(e.local_name().as_ref()).into_owned(),
                ))?;
            }
            Event::Text(t) if depth == 0 => {
                let text = t.unescape().map_err(|e| bad(e.to_string()))?;
                if !text.trim().is_empty() {
                    return Err(bad(format!(
                        "at byte {position}: text outside the root element"
                    )));
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !seen_root {
        return Err(bad("no root element".into()));
    }
    if depth != 0 {
        return Err(bad(format!(
            "ends with {depth} element(s) still open (truncated?)"
        )));
    }
    Ok(())
}
