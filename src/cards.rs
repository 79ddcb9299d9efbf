//! Card rendering: handlebars templates in `cards/`, JSON-string escaping, parsed back to JSON.
//!
//! The templates are compiled into the binary (see [`TEMPLATES`]) and rendered in strict mode,
//! so a field the view model lacks is an error rather than an empty string. Every `{{value}}`
//! is escaped for use inside a JSON string literal (never HTML-escaped). Helpers besides the
//! built-ins (`eq`, `not`, `#each`, ...): `{{json value}}` embeds a value as JSON, and
//! `{{#if (has value)}}` tests an optional value (null, false or empty is absent) while still
//! failing when the field itself is missing, which the plain `#if` would not.
//!
//! The rendered text is compacted (whitespace between tokens dropped) and validated as JSON
//! with `serde_json`, so a template that produces invalid JSON fails with an error naming it.
//! [`CardRenderer::render_raw`] returns that text as a [`RawValue`], which is embedded as is in
//! an outgoing activity (no JSON tree is built on the reply path); [`CardRenderer::render`]
//! parses it into a [`Value`].

use handlebars::{
    Context, Handlebars, Helper, HelperDef, HelperResult, Output, RenderContext, RenderError,
    RenderErrorReason, ScopedJson,
};
use serde_json::Value;
use serde_json::value::RawValue;

/// The largest compact card (in bytes) that [`CardRenderer::render`] returns; Teams rejects
/// bot messages above 100 KB, and the rest of the activity needs room too.
pub const MAX_CARD_BYTES: usize = 80 * 1024;

/// The templates compiled into the binary: (name, handlebars source).
const TEMPLATES: &[(&str, &str)] = &[
    ("teams/help", include_str!("../cards/teams/help.json.hbs")),
    (
        "teams/notice",
        include_str!("../cards/teams/notice.json.hbs"),
    ),
];

/// A template could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum CardError {
    /// Unknown template name.
    #[error("no card template named {0}")]
    UnknownTemplate(String),
    /// A compiled-in template does not parse as handlebars.
    #[error("card template {name} does not compile: {message}")]
    Compile {
        /// Template name.
        name: String,
        /// What the template parser said.
        message: String,
    },
    /// Rendering failed, e.g. the view model lacks a field the template uses.
    #[error("card template {name} failed to render: {message}")]
    Render {
        /// Template name.
        name: String,
        /// What the renderer said.
        message: String,
    },
    /// The rendered text is not valid JSON (a bug in the template).
    #[error("card template {name} produced invalid JSON: {message}")]
    InvalidJson {
        /// Template name.
        name: String,
        /// Where parsing failed.
        message: String,
    },
    /// The rendered card is larger than [`MAX_CARD_BYTES`].
    #[error("card {name} is {size} bytes, more than the {limit}-byte limit")]
    TooLarge {
        /// Template name.
        name: String,
        /// Size of the compact JSON text in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
}

/// Renders the templates compiled into the binary.
pub struct CardRenderer {
    registry: Handlebars<'static>,
}

impl std::fmt::Debug for CardRenderer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CardRenderer")
            .field("templates", &template_names())
            .finish()
    }
}

impl CardRenderer {
    /// Loads every template.
    pub fn new() -> Result<Self, CardError> {
        let mut registry = Handlebars::new();
        registry.set_strict_mode(true);
        registry.register_escape_fn(escape_json_string);
        registry.register_helper("json", Box::new(json_helper));
        registry.register_helper("has", Box::new(HasHelper));
        for (name, source) in TEMPLATES {
            registry
                .register_template_string(name, source)
                .map_err(|err| CardError::Compile {
                    name: (*name).to_owned(),
                    message: err.to_string(),
                })?;
        }
        Ok(Self { registry })
    }

    /// Renders `name` (e.g. `teams/help`) with `data` into a JSON value.
    pub fn render(&self, name: &str, data: &Value) -> Result<Value, CardError> {
        let context = Context::wraps(data).map_err(|err| render_error(name, &err))?;
        let raw = self.render_context(name, &context)?;
        serde_json::from_str(raw.get()).map_err(|err| CardError::InvalidJson {
            name: name.to_owned(),
            message: err.to_string(),
        })
    }

    /// Renders `name` with `data` into compact, validated JSON text, ready to be embedded as is
    /// in a serialized activity. Takes the view model by value to avoid copying it.
    pub fn render_raw(&self, name: &str, data: Value) -> Result<Box<RawValue>, CardError> {
        self.render_context(name, &Context::from(data))
    }

    fn render_context(&self, name: &str, context: &Context) -> Result<Box<RawValue>, CardError> {
        let Some(source) = TEMPLATES
            .iter()
            .find_map(|(template, source)| (*template == name).then_some(*source))
            .filter(|_| self.registry.has_template(name))
        else {
            return Err(CardError::UnknownTemplate(name.to_owned()));
        };
        let mut text = Vec::with_capacity(source.len() + 1024);
        self.registry
            .render_with_context_to_write(name, context, &mut text)
            .map_err(|err| render_error(name, &err))?;
        compact_json(&mut text);
        let size = text.len();
        let invalid = |message: String| CardError::InvalidJson {
            name: name.to_owned(),
            message,
        };
        let text = String::from_utf8(text).map_err(|err| invalid(err.to_string()))?;
        let card = RawValue::from_string(text).map_err(|_| {
            // Report the position in the rendered text, not in its compact form.
            let message = self
                .registry
                .render_with_context(name, context)
                .ok()
                .and_then(|text| serde_json::from_str::<&RawValue>(&text).err())
                .map_or_else(|| "invalid JSON".to_owned(), |err| err.to_string());
            invalid(message)
        })?;
        if size > MAX_CARD_BYTES {
            return Err(CardError::TooLarge {
                name: name.to_owned(),
                size,
                limit: MAX_CARD_BYTES,
            });
        }
        Ok(card)
    }
}

fn render_error(name: &str, err: &RenderError) -> CardError {
    CardError::Render {
        name: name.to_owned(),
        message: render_error_message(err),
    }
}

/// Removes the whitespace between JSON tokens, in place. Whitespace inside strings is kept, and
/// so is whitespace between two tokens neither of which is a string or a structural character
/// (`1 2`, `tru e`), so that invalid JSON stays invalid. Only ASCII bytes are removed, so UTF-8
/// text stays UTF-8.
fn compact_json(text: &mut Vec<u8>) {
    let is_space = |b: u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    let delimits = |b: u8| matches!(b, 0 | b'{' | b'}' | b'[' | b']' | b',' | b':' | b'"');
    let mut in_string = false;
    let mut escaped = false;
    // The last byte kept outside a string, or 0 at the start.
    let mut previous = 0u8;
    let mut read = 0;
    let mut write = 0;
    while read < text.len() {
        let byte = text[read];
        if !in_string && is_space(byte) {
            let run_start = read;
            while read < text.len() && is_space(text[read]) {
                read += 1;
            }
            let next = text.get(read).copied().unwrap_or(0);
            if !delimits(previous) && !delimits(next) {
                for index in run_start..read {
                    text[write] = text[index];
                    write += 1;
                }
            }
            continue;
        }
        if in_string {
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
                previous = b'"';
            }
        } else {
            in_string = byte == b'"';
            previous = byte;
        }
        text[write] = byte;
        write += 1;
        read += 1;
    }
    text.truncate(write);
}

/// The names of every compiled-in template, e.g. `teams/help`.
pub fn template_names() -> Vec<&'static str> {
    TEMPLATES.iter().map(|(name, _)| *name).collect()
}

/// The reason and position of a render error, without the data that was being rendered.
fn render_error_message(err: &RenderError) -> String {
    match (err.line_no, err.column_no) {
        (Some(line), Some(column)) => format!("{} (line {line}, column {column})", err.reason()),
        _ => err.reason().to_string(),
    }
}

/// Escapes text for the inside of a JSON string literal: quotes, backslashes, control
/// characters and U+2028/U+2029 (which break JavaScript embedding).
pub fn escape_json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if u32::from(c) < 0x20 || c == '\u{2028}' || c == '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", u32::from(c)));
            }
            c => out.push(c),
        }
    }
    out
}

/// `{{json value}}`: writes `value` as JSON (quotes included for strings), unescaped.
fn json_helper(
    h: &Helper<'_>,
    _: &Handlebars<'_>,
    _: &Context,
    _: &mut RenderContext<'_, '_>,
    out: &mut dyn Output,
) -> HelperResult {
    let param = h
        .param(0)
        .ok_or(RenderErrorReason::ParamNotFoundForIndex("json", 0))?;
    if param.is_value_missing() {
        return Err(RenderErrorReason::MissingVariable(param.relative_path().cloned()).into());
    }
    let text = serde_json::to_string(param.value())
        .map_err(|err| RenderErrorReason::NestedError(Box::new(err)))?;
    out.write(
        &text
            .replace('\u{2028}', "\\u2028")
            .replace('\u{2029}', "\\u2029"),
    )?;
    Ok(())
}

/// `(has value)`: whether `value` is present and neither null, false, 0, "" nor empty; an error
/// when the field does not exist at all (strict mode), unlike `#if`.
struct HasHelper;

impl HelperDef for HasHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let param = h
            .param(0)
            .ok_or(RenderErrorReason::ParamNotFoundForIndex("has", 0))?;
        if param.is_value_missing() {
            return Err(RenderErrorReason::MissingVariable(param.relative_path().cloned()).into());
        }
        let truthy = match param.value() {
            Value::Null | Value::Bool(false) => false,
            Value::Bool(true) => true,
            Value::String(s) => !s.is_empty(),
            Value::Array(items) => !items.is_empty(),
            Value::Object(map) => !map.is_empty(),
            Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        };
        Ok(ScopedJson::Derived(Value::Bool(truthy)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn escape_round_trips_through_a_json_string() {
        let hostile = "a\"b\\c\nd\te\u{0}f\u{1f}g\u{2028}h\u{2029}i</script>{{x}}😀";
        let escaped = escape_json_string(hostile);
        assert!(!escaped.contains('\u{2028}') && !escaped.contains('\u{0}'));
        let parsed: String = serde_json::from_str(&format!("\"{escaped}\"")).expect("valid JSON");
        assert_eq!(parsed, hostile);
    }

    #[test]
    fn every_template_compiles() {
        let renderer = CardRenderer::new().expect("templates compile");
        for name in template_names() {
            assert!(renderer.registry.has_template(name), "{name}");
        }
    }

    #[test]
    fn json_helper_embeds_values() {
        let mut registry = Handlebars::new();
        registry.set_strict_mode(true);
        registry.register_escape_fn(escape_json_string);
        registry.register_helper("json", Box::new(json_helper));
        let out = registry
            .render_template(
                r#"{"a": {{json a}}, "b": {{json b}}}"#,
                &json!({"a": "x\"\u{2028}", "b": [1, null]}),
            )
            .expect("renders");
        assert!(out.contains("\\u2028"));
        let value: Value = serde_json::from_str(&out).expect("valid JSON");
        assert_eq!(value, json!({"a": "x\"\u{2028}", "b": [1, null]}));
        let missing = registry.render_template("{{json nope}}", &json!({}));
        assert!(missing.is_err());
    }

    #[test]
    fn has_helper_is_strict_about_missing_fields() {
        let renderer = CardRenderer::new().expect("templates compile");
        let tpl = "{{#if (has v)}}yes{{else}}no{{/if}}";
        let render = |data: Value| renderer.registry.render_template(tpl, &data);
        for (value, expected) in [
            (json!(null), "no"),
            (json!(""), "no"),
            (json!(false), "no"),
            (json!([]), "no"),
            (json!(0), "no"),
            (json!("x"), "yes"),
            (json!([1]), "yes"),
            (json!(true), "yes"),
            (json!(2), "yes"),
        ] {
            let out = render(json!({ "v": value })).expect("renders");
            assert_eq!(out, expected, "{value}");
        }
        assert!(render(json!({})).is_err());
    }

    fn compacted(text: &str) -> String {
        let mut bytes = text.as_bytes().to_vec();
        compact_json(&mut bytes);
        String::from_utf8(bytes).expect("still UTF-8")
    }

    #[test]
    fn compaction_drops_only_whitespace_between_tokens() {
        assert_eq!(
            compacted(" {\n  \"a b\" : [ 1 , true ,\tnull ] ,\r\n \"c\":\"x\\\" y\\\\\" } \n"),
            r#"{"a b":[1,true,null],"c":"x\" y\\"}"#
        );
        assert_eq!(
            compacted(r#"{"k": "  é 😀\u2028 "}"#),
            r#"{"k":"  é 😀\u2028 "}"#
        );
        // Whitespace that separates two bare tokens stays, so invalid JSON stays invalid.
        for invalid in ["[1 2]", "tru e", "[true false]", "{\"a\": nu ll}"] {
            let out = compacted(invalid);
            assert!(serde_json::from_str::<Value>(invalid).is_err());
            assert!(
                serde_json::from_str::<Value>(&out).is_err(),
                "{invalid} -> {out}"
            );
        }
        assert_eq!(compacted("[1 2]"), "[1 2]");
        assert_eq!(compacted(""), "");
        assert_eq!(compacted("  "), "");
    }

    #[test]
    fn raw_and_value_renderings_agree() {
        let renderer = CardRenderer::new().expect("templates compile");
        let data = json!({"title": "T \"q\"\n", "intro": "i\u{2028}",
                          "commands": [{"usage": "help", "description": "d  e"}]});
        let raw = renderer
            .render_raw("teams/help", data.clone())
            .expect("renders");
        assert!(!raw.get().contains('\n'), "compact: {}", raw.get());
        let parsed: Value = serde_json::from_str(raw.get()).expect("valid JSON");
        assert_eq!(
            parsed,
            renderer.render("teams/help", &data).expect("renders")
        );
        assert_eq!(parsed["body"][0]["text"], "T \"q\"\n");
        assert!(matches!(
            renderer.render_raw("teams/nope", json!({})),
            Err(CardError::UnknownTemplate(_))
        ));
        assert!(matches!(
            renderer.render_raw("teams/help", json!({})),
            Err(CardError::Render { .. })
        ));
    }

    #[test]
    fn unknown_template_is_an_error() {
        let renderer = CardRenderer::new().expect("templates compile");
        let err = renderer
            .render("teams/nope", &json!({}))
            .expect_err("unknown");
        assert!(matches!(err, CardError::UnknownTemplate(_)));
    }
}
