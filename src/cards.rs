//! Card rendering: handlebars templates in `cards/`, JSON-string escaping, parsed back to JSON.
//!
//! The templates are compiled into the binary (see [`TEMPLATES`]) and rendered in strict mode,
//! so a field the view model lacks is an error rather than an empty string. Every `{{value}}`
//! is escaped for use inside a JSON string literal (never HTML-escaped). Helpers besides the
//! built-ins (`eq`, `not`, `#each`, ...): `{{json value}}` embeds a value as JSON, and
//! `{{#if (has value)}}` tests an optional value (null, false or empty is absent) while still
//! failing when the field itself is missing, which the plain `#if` would not.
//!
//! The templates are compacted once when loaded (whitespace between JSON tokens dropped), so
//! they render compact JSON, which is validated with `serde_json`: a template that produces
//! invalid JSON fails with an error naming it. [`CardRenderer::render_raw`] returns that text as
//! a [`RawValue`], embedded as is in an outgoing activity (no JSON tree is built on the reply
//! path); [`CardRenderer::render`] parses the text into a [`Value`].

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
    (
        "teams/setup_step",
        include_str!("../cards/teams/setup_step.json.hbs"),
    ),
    (
        "teams/setup_complete",
        include_str!("../cards/teams/setup_complete.json.hbs"),
    ),
    (
        "teams/setup_results",
        include_str!("../cards/teams/setup_results.json.hbs"),
    ),
    (
        "teams/notify_case",
        include_str!("../cards/teams/notify_case.json.hbs"),
    ),
    (
        "teams/notify_update",
        include_str!("../cards/teams/notify_update.json.hbs"),
    ),
    (
        "teams/notify_status",
        include_str!("../cards/teams/notify_status.json.hbs"),
    ),
    (
        "teams/trust_alert",
        include_str!("../cards/teams/trust_alert.json.hbs"),
    ),
    (
        "teams/notify_subscriptions",
        include_str!("../cards/teams/notify_subscriptions.json.hbs"),
    ),
    (
        "teams/link_signin",
        include_str!("../cards/teams/link_signin.json.hbs"),
    ),
    (
        "teams/link_roles",
        include_str!("../cards/teams/link_roles.json.hbs"),
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
                .register_template_string(name, compact_template(source))
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
        // The registered template is compact, so the output is too (values only add escaped
        // string content and compact `{{json}}` text).
        let mut text = Vec::with_capacity(source.len() + 1024);
        self.registry
            .render_with_context_to_write(name, context, &mut text)
            .map_err(|err| render_error(name, &err))?;
        let size = text.len();
        let invalid = |message: String| CardError::InvalidJson {
            name: name.to_owned(),
            message,
        };
        let text = String::from_utf8(text).map_err(|err| invalid(err.to_string()))?;
        let card = RawValue::from_string(text).map_err(|err| invalid(err.to_string()))?;
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

/// A handlebars JSON template without the whitespace between JSON tokens, so that it renders
/// compact JSON. Handlebars tags (`{{x}}`, `{{{x}}}`, `{{!-- x --}}`) are copied as they are:
/// value tags count as bare tokens, block and comment tags (`#`, `/`, `^`, `else`, `!`) as
/// nothing. Whitespace inside JSON strings is kept, and so is whitespace between two bare tokens
/// (`1 2`, `tru e`, `1 {{json x}}`), so that a template rendering invalid JSON still does.
fn compact_template(source: &str) -> String {
    let bytes = source.as_bytes();
    let is_space = |b: u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    // 0 stands for the start or the end of the text.
    let delimits = |b: u8| matches!(b, 0 | b'{' | b'}' | b'[' | b']' | b',' | b':' | b'"');
    let tag_at = |index: usize| {
        bytes
            .get(index..)
            .is_some_and(|rest| rest.starts_with(b"{{"))
    };
    // The length of the tag at `index`, and whether it renders nothing by itself.
    let tag = |index: usize| {
        let rest = &source[index..];
        let close = if rest.starts_with("{{!--") {
            "--}}"
        } else if rest.starts_with("{{{") {
            "}}}"
        } else {
            "}}"
        };
        let len = rest
            .get(2..)
            .and_then(|after| after.find(close))
            .map_or(rest.len(), |at| at + 2 + close.len());
        let inner = rest.get(2..).unwrap_or_default().trim_start_matches('~');
        let silent = !rest.starts_with("{{{")
            && (inner.starts_with(['#', '/', '^', '!']) || inner.trim_start().starts_with("else"));
        (len, silent)
    };
    // The first token at or after `index`, past whitespace and silent tags: its byte, `b'h'`
    // for a value tag, 0 at the end.
    let next_token = |mut index: usize| loop {
        match bytes.get(index) {
            None => return 0,
            Some(&b) if is_space(b) => index += 1,
            Some(_) if tag_at(index) => match tag(index) {
                (len, true) => index += len,
                (_, false) => return b'h',
            },
            Some(&b) => return b,
        }
    };
    let mut out = String::with_capacity(source.len());
    let mut in_string = false;
    let mut escaped = false;
    // The last token byte outside strings; `b'h'` after a value tag (a bare token).
    let mut previous = 0u8;
    let mut index = 0;
    while index < bytes.len() {
        if tag_at(index) {
            let (len, silent) = tag(index);
            out.push_str(&source[index..index + len]);
            index += len;
            if !in_string && !silent {
                previous = b'h';
            }
            continue;
        }
        let byte = bytes[index];
        if in_string {
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
                previous = b'"';
            }
        } else if is_space(byte) {
            let run_start = index;
            while index < bytes.len() && is_space(bytes[index]) {
                index += 1;
            }
            if !delimits(previous) && !delimits(next_token(index)) {
                out.push_str(&source[run_start..index]);
            }
            continue;
        } else {
            in_string = byte == b'"';
            previous = byte;
        }
        let len = source[index..].chars().next().map_or(1, char::len_utf8);
        out.push_str(&source[index..index + len]);
        index += len;
    }
    out
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

/// Escapes the Adaptive Card markdown subset (and the CommonMark that Teams' renderers also
/// read) in untrusted text, so it shows literally: no links, emphasis, lists, headings, quotes
/// or tables, and no bare URL that a client turns into a link (`://` gets a zero-width space).
pub fn escape_markdown(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    let mut line_start = true;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' | '*' | '_' | '[' | ']' | '`' | '~' | '<' | '>' | '|' => {
                out.push('\\');
                out.push(c);
            }
            '#' | '-' | '+' | '=' if line_start => {
                out.push('\\');
                out.push(c);
            }
            c if line_start && c.is_ascii_digit() => {
                // `1. item` or `1) item` is a numbered list: escape the marker after the digits.
                out.push(c);
                while let Some(&digit) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    out.push(digit);
                    chars.next();
                }
                if let Some(marker) = chars.next_if(|m| matches!(m, '.' | ')')) {
                    out.push('\\');
                    out.push(marker);
                }
            }
            ':' if chars.peek() == Some(&'/') => out.push_str(":\u{200B}"),
            c => out.push(c),
        }
        line_start = c == '\n' || (line_start && c == ' ');
    }
    out
}

/// Escapes text for the inside of a JSON string literal: quotes, backslashes, control
/// characters and U+2028/U+2029 (which break JavaScript embedding).
pub fn escape_json_string(text: &str) -> String {
    // U+2028 and U+2029 are E2 80 A8 and E2 80 A9 in UTF-8; their first byte is enough to take
    // the slow path.
    if !text
        .bytes()
        .any(|b| b < 0x20 || b == b'"' || b == b'\\' || b == 0xE2)
    {
        return text.to_owned();
    }
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

    /// Whether `json` has no whitespace outside strings.
    fn is_compact(json: &str) -> bool {
        let (mut in_string, mut escaped) = (false, false);
        json.chars().all(|c| {
            if in_string {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '"' {
                    in_string = false;
                }
                true
            } else {
                in_string = c == '"';
                !c.is_ascii_whitespace()
            }
        })
    }

    #[test]
    fn template_compaction_keeps_tags_strings_and_bare_token_gaps() {
        let source = "{{!-- a  comment --}}\n{\n  \"a b\" : [ 1 , true ,\tnull ] ,\r\n  \"s\": \"{{#if (eq x \"y  z\")}} k {{else}}\\\" q{{/if}}\",\n  \"items\": [\n    {{#each xs}}\n    { \"v\": {{json this}} }{{#unless @last}},{{/unless}}\n    {{/each}}\n  ],\n  \"raw\": {{{ raw }}} \n}\n";
        assert_eq!(
            compact_template(source),
            "{{!-- a  comment --}}{\"a b\":[1,true,null],\"s\":\"{{#if (eq x \"y  z\")}} k {{else}}\\\" q{{/if}}\",\"items\":[{{#each xs}}{\"v\":{{json this}}}{{#unless @last}},{{/unless}}{{/each}}],\"raw\":{{{ raw }}}}"
        );
        assert_eq!(
            compact_template("{\"k\": \"  é 😀 \"}"),
            "{\"k\":\"  é 😀 \"}"
        );
        // Whitespace that separates two bare tokens stays, so invalid JSON stays invalid.
        for (invalid, expected) in [
            ("[1 2]", "[1 2]"),
            ("[tru e]", "[tru e]"),
            ("[1 {{json x}}]", "[1 {{json x}}]"),
            ("[{{json x}}  {{json y}}]", "[{{json x}}  {{json y}}]"),
            ("[1 {{#if x}} 2{{/if}}]", "[1 {{#if x}} 2{{/if}}]"),
            // Branches look adjacent in the source: the gap between them stays.
            (
                "[1, {{#if x}} 2 {{else}} 3 {{/if}} ]",
                "[1,{{#if x}}2 {{else}} 3{{/if}}]",
            ),
        ] {
            assert_eq!(compact_template(invalid), expected);
        }
        assert_eq!(compact_template(""), "");
        assert_eq!(compact_template("  {{x"), "{{x");
    }

    #[test]
    fn compiled_templates_render_compact_json() {
        let renderer = CardRenderer::new().expect("templates compile");
        let help = json!({"title": "T  \"q\"\n", "intro": "i\u{2028}",
                          "commands": [{"usage": "help", "description": "d  e"},
                                       {"usage": "x y", "description": "\t"}]});
        let notices = ["default", "good", "warning", "attention"]
            .map(|tone| json!({"tone": tone, "title": "a  b", "text": "c\nd", "next_step": "e f"}));
        for (name, data) in std::iter::once(("teams/help", help))
            .chain(notices.into_iter().map(|data| ("teams/notice", data)))
        {
            let raw = renderer.render_raw(name, data).expect("renders");
            assert!(is_compact(raw.get()), "{name}: {}", raw.get());
        }
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
