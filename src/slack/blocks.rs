//! Block Kit messages from the same view models as the Adaptive Cards.
//!
//! Each [`Reply`] template has a builder here; every builder shortens what is too long for
//! Slack with "…" (and, where the view model has one, a link to the whole thing) instead of
//! letting Slack refuse the message: 50 blocks per message, 100 per modal, 3,000 characters
//! per text, 150 per header, 10 fields of 2,000, 75 per button text, 255 per `action_id` and
//! `block_id`, 24 per modal title. [`check_limits`] verifies a rendered message against the
//! same table. Text from the core is Markdown (Teams); [`mrkdwn`] turns it into Slack's
//! mrkdwn with `&`, `<` and `>` escaped, so user text cannot mention `@channel` or forge links.

use serde_json::{Value, json};

use crate::core::Reply;

/// Most blocks in a message.
pub const MAX_MESSAGE_BLOCKS: usize = 50;
/// Most blocks in a modal or Home tab.
pub const MAX_MODAL_BLOCKS: usize = 100;
/// Longest text object.
pub const MAX_TEXT: usize = 3000;
/// Longest header text.
pub const MAX_HEADER: usize = 150;
/// Most fields in a section.
pub const MAX_FIELDS: usize = 10;
/// Longest field text.
pub const MAX_FIELD: usize = 2000;
/// Longest button text.
pub const MAX_BUTTON_TEXT: usize = 75;
/// Longest `action_id` or `block_id`.
pub const MAX_ID: usize = 255;
/// Longest modal title, submit or close text.
pub const MAX_MODAL_TITLE: usize = 24;
/// Most elements in a context block.
pub const MAX_CONTEXT_ELEMENTS: usize = 10;
/// Longest top-level `text` (the notification fallback; `chat.update` refuses more than 4,000).
pub const MAX_FALLBACK_TEXT: usize = 4000;

/// A message: the notification fallback `text` and the blocks.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Plain fallback text (notifications, screen readers).
    pub text: String,
    /// Block Kit blocks.
    pub blocks: Vec<Value>,
}

impl Message {
    /// The message as the JSON of `chat.postMessage` or a `response_url` post.
    pub fn to_json(&self) -> Value {
        json!({"text": self.text, "blocks": self.blocks})
    }
}

/// `text` cut to `max` characters, ending with "…" when cut.
pub fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Escapes text for mrkdwn: `&`, `<` and `>` (Slack's control characters).
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

/// Turns the core's Markdown (`**bold**`, `[label](url)`, backslash escapes, as produced with
/// [`crate::cards::escape_markdown`]) into mrkdwn (`*bold*`, `<url|label>`), escaping `&`, `<`
/// and `>` everywhere else.
pub fn mrkdwn(markdown: &str) -> String {
    let chars: Vec<char> = markdown.chars().collect();
    let mut out = String::with_capacity(markdown.len() + 8);
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '\\' if i + 1 < chars.len() && chars[i + 1].is_ascii_punctuation() => {
                out.push_str(&escape(&chars[i + 1].to_string()));
                i += 2;
            }
            '*' if chars.get(i + 1) == Some(&'*') => {
                out.push('*');
                i += 2;
            }
            '[' => match markdown_link(&chars[i..]) {
                Some((label, url, used)) => {
                    out.push('<');
                    out.push_str(&escape(&url).replace('|', "%7C"));
                    out.push('|');
                    out.push_str(&escape(&label).replace('|', "¦"));
                    out.push('>');
                    i += used;
                }
                None => {
                    out.push('[');
                    i += 1;
                }
            },
            c => {
                out.push_str(&escape(&c.to_string()));
                i += 1;
            }
        }
    }
    out
}

/// `[label](https://…)` at the start of `chars`: label, URL and characters used.
fn markdown_link(chars: &[char]) -> Option<(String, String, usize)> {
    let close = chars.iter().position(|c| *c == ']')?;
    if chars.get(close + 1) != Some(&'(') {
        return None;
    }
    let end = close + 2 + chars[close + 2..].iter().position(|c| *c == ')')?;
    let label: String = chars[1..close].iter().collect();
    let url: String = chars[close + 2..end].iter().collect();
    let safe = (url.starts_with("https://") || url.starts_with("http://"))
        && !url
            .chars()
            .any(|c| c.is_whitespace() || c == '<' || c == '>');
    safe.then_some((label, url, end + 1))
}

fn plain(text: &str, max: usize) -> Value {
    json!({"type": "plain_text", "text": shorten(text, max), "emoji": true})
}

/// A header block (plain text, at most 150 characters).
pub fn header(text: &str) -> Value {
    json!({"type": "header", "text": plain(text, MAX_HEADER)})
}

/// A section of mrkdwn text (already converted), shortened to 3,000 characters.
pub fn section(text: &str) -> Value {
    json!({"type": "section", "text": {"type": "mrkdwn", "text": shorten(text, MAX_TEXT)}})
}

/// A section of label/value fields (at most 10; the rest are dropped with a note).
pub fn fields(pairs: &[(String, String)]) -> Vec<Value> {
    let mut blocks = Vec::new();
    for chunk in pairs.chunks(MAX_FIELDS) {
        let fields: Vec<Value> = chunk
            .iter()
            .map(|(title, value)| {
                json!({"type": "mrkdwn", "text": shorten(&format!("*{}*\n{}", escape(title), mrkdwn(value)), MAX_FIELD)})
            })
            .collect();
        blocks.push(json!({"type": "section", "fields": fields}));
    }
    blocks
}

/// A context block of mrkdwn texts (at most 10).
pub fn context(texts: &[String]) -> Value {
    let elements: Vec<Value> = texts
        .iter()
        .filter(|t| !t.is_empty())
        .take(MAX_CONTEXT_ELEMENTS)
        .map(|t| json!({"type": "mrkdwn", "text": shorten(t, MAX_TEXT)}))
        .collect();
    json!({"type": "context", "elements": elements})
}

/// An actions block with one link button.
pub fn link_button(text: &str, url: &str, action_id: &str) -> Value {
    json!({"type": "actions", "elements": [{
        "type": "button",
        "text": plain(text, MAX_BUTTON_TEXT),
        "url": shorten(url, MAX_TEXT),
        "action_id": shorten(action_id, MAX_ID),
    }]})
}

/// Keeps at most `max` blocks: past that, the last kept block says how many were left out
/// and, when `more_url` is given, links to the whole thing.
pub fn fit(mut blocks: Vec<Value>, max: usize, more_url: Option<&str>) -> Vec<Value> {
    if blocks.len() <= max {
        return blocks;
    }
    let left_out = blocks.len() - (max - 1);
    blocks.truncate(max - 1);
    let text = match more_url.filter(|u| u.starts_with("http")) {
        Some(url) => format!("… and {left_out} more: <{}|see all>", escape(url)),
        None => format!("… and {left_out} more, not shown here."),
    };
    blocks.push(context(&[text]));
    blocks
}

fn tone_emoji(tone: &str) -> &'static str {
    match tone {
        "good" => ":white_check_mark:",
        "warning" => ":warning:",
        "attention" => ":x:",
        _ => ":information_source:",
    }
}

fn str_of<'a>(data: &'a Value, key: &str) -> &'a str {
    data.get(key).and_then(Value::as_str).unwrap_or_default()
}

fn list<'a>(data: &'a Value, key: &str) -> &'a [Value] {
    data.get(key)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn facts(data: &Value) -> Vec<(String, String)> {
    list(data, "facts")
        .iter()
        .map(|f| (str_of(f, "title").to_owned(), str_of(f, "value").to_owned()))
        .filter(|(_, value)| !value.is_empty())
        .collect()
}

/// The Block Kit message of a reply; templates without a Slack form get a notice saying to
/// use Teams (never their content, which may hold secrets meant for a 1:1 Teams chat).
pub fn render(reply: &Reply) -> Message {
    let Reply::Card { template, data } = reply;
    let (text, blocks, more_url) = match *template {
        "help" => help(data),
        "notice" => notice(data),
        "setup_results" => results(data),
        "link_roles" => roles(data),
        "link_signin" => signin(data),
        "notify_status" | "notify_case" => case(data),
        "notify_update" => update(data),
        "notify_subscriptions" => subscriptions(data),
        _ => {
            return render(&Reply::notice(
                crate::core::Tone::Warning,
                "Not available in Slack yet",
                "This answer can only be shown in Microsoft Teams in this version.",
                Some("Use the same command in Teams."),
            ));
        }
    };
    // The fallback text is mrkdwn too (and shown in notifications): escaped like the rest.
    Message {
        text: shorten(&escape(&text), MAX_FALLBACK_TEXT),
        blocks: fit(blocks, MAX_MESSAGE_BLOCKS, more_url.as_deref()),
    }
}

type Built = (String, Vec<Value>, Option<String>);

fn help(data: &Value) -> Built {
    let mut blocks = vec![
        header(str_of(data, "title")),
        section(
            "Type `/m365 <command>` in any channel or in a direct message with me. In Teams the same commands work in a chat with m365bot.",
        ),
    ];
    let lines: Vec<String> = list(data, "commands")
        .iter()
        .map(|c| {
            format!(
                "`/m365 {}`  {}",
                escape(str_of(c, "usage")),
                mrkdwn(str_of(c, "description"))
            )
        })
        .collect();
    // Several commands per section keeps long lists well under the block limit.
    for chunk in lines.chunks(8) {
        blocks.push(section(&chunk.join("\n")));
    }
    (str_of(data, "title").to_owned(), blocks, None)
}

fn notice(data: &Value) -> Built {
    let title = str_of(data, "title");
    let mut blocks = vec![section(&format!(
        "{} *{}*\n{}",
        tone_emoji(str_of(data, "tone")),
        escape(title),
        mrkdwn(str_of(data, "text"))
    ))];
    let next = str_of(data, "next_step");
    if !next.is_empty() {
        blocks.push(context(&[mrkdwn(next)]));
    }
    (format!("{title}: {}", str_of(data, "text")), blocks, None)
}

fn results(data: &Value) -> Built {
    let title = str_of(data, "title");
    let mut blocks = vec![header(title)];
    let summary = str_of(data, "summary");
    if !summary.is_empty() {
        blocks.push(section(&format!(
            "{} {}",
            tone_emoji(str_of(data, "tone")),
            mrkdwn(summary)
        )));
    }
    blocks.extend(fields(&facts(data)));
    for check in list(data, "checks") {
        let mut text = format!(
            "{} *{}*",
            escape(str_of(check, "mark")),
            mrkdwn(str_of(check, "title"))
        );
        let detail = str_of(check, "detail");
        if !detail.is_empty() {
            text.push('\n');
            text.push_str(&mrkdwn(detail));
        }
        let fix = str_of(check, "fix");
        if !fix.is_empty() {
            text.push_str("\n_Fix:_ ");
            text.push_str(&mrkdwn(fix));
        }
        blocks.push(section(&text));
    }
    let lines = list(data, "lines");
    if !lines.is_empty() {
        let text: Vec<String> = lines.iter().filter_map(Value::as_str).map(mrkdwn).collect();
        blocks.push(section(&format!(
            "*{}*\n{}",
            escape(str_of(data, "lines_title")),
            text.join("\n")
        )));
    }
    if !list(data, "actions").is_empty() {
        blocks.push(context(&[
            "The buttons of this report (repair, run again) are in Teams for now.".to_owned(),
        ]));
    }
    (format!("{title}: {summary}"), blocks, None)
}

fn roles(data: &Value) -> Built {
    let title = str_of(data, "title");
    let mut blocks = vec![header(title)];
    let text = str_of(data, "text");
    if !text.is_empty() {
        blocks.push(section(&mrkdwn(text)));
    }
    for role in list(data, "roles") {
        let holders: Vec<String> = list(role, "holders")
            .iter()
            .map(|h| {
                let name = str_of(h, "name");
                let user = escape(str_of(h, "user_name"));
                if name.is_empty() {
                    user
                } else {
                    format!("{} ({user})", escape(name))
                }
            })
            .collect();
        let body = if holders.is_empty() {
            escape(str_of(role, "empty"))
        } else {
            holders.join("\n")
        };
        blocks.push(section(&format!(
            "*{}*\n{body}",
            escape(str_of(role, "role"))
        )));
    }
    (title.to_owned(), blocks, None)
}

fn signin(data: &Value) -> Built {
    let title = str_of(data, "title");
    let url = str_of(data, "url");
    let mut blocks = vec![section(&format!(
        "*{}*\n{}",
        escape(title),
        mrkdwn(str_of(data, "text"))
    ))];
    if url.starts_with("http") {
        blocks.push(link_button(str_of(data, "button"), url, "link.signin"));
    }
    let note = str_of(data, "note");
    if !note.is_empty() {
        blocks.push(context(&[mrkdwn(note)]));
    }
    (title.to_owned(), blocks, None)
}

fn case(data: &Value) -> Built {
    let number = str_of(data, "number");
    let title = str_of(data, "title");
    let url = str_of(data, "url");
    let mut blocks = vec![
        context(&[escape(str_of(data, "source_label"))]),
        header(&format!("{number} {title}")),
        section(&format!(
            "{} *{}*",
            tone_emoji(str_of(data, "tone")),
            escape(str_of(data, "state"))
        )),
    ];
    blocks.extend(fields(&facts(data)));
    let note = str_of(data, "latest_note");
    if !note.is_empty() {
        blocks.push(section(&mrkdwn(note)));
    }
    let mut footer = vec![format!("Updated {}", escape(str_of(data, "updated")))];
    if data.get("live").and_then(Value::as_bool) == Some(true) {
        footer.push("Read from ServiceNow just now.".to_owned());
    }
    blocks.push(context(&footer));
    if url.starts_with("http") {
        let label = match str_of(data, "url_label") {
            "" => "Open",
            label => label,
        };
        blocks.push(link_button(label, url, "case.open"));
    }
    let text = format!("{number} {title}: {}", str_of(data, "state"));
    (
        text,
        blocks,
        url.starts_with("http").then(|| url.to_owned()),
    )
}

fn update(data: &Value) -> Built {
    let number = str_of(data, "number");
    let headline = str_of(data, "headline");
    let mut blocks = vec![section(&format!(
        "{} *{}* {}",
        tone_emoji(str_of(data, "tone")),
        escape(number),
        mrkdwn(headline)
    ))];
    let note = str_of(data, "latest_note");
    if !note.is_empty() {
        blocks.push(section(&mrkdwn(note)));
    }
    let merged = str_of(data, "merged_note");
    blocks.push(context(&[
        format!("Updated {}", escape(str_of(data, "updated"))),
        mrkdwn(merged),
    ]));
    (format!("{number}: {headline}"), blocks, None)
}

fn subscriptions(data: &Value) -> Built {
    let mut blocks = vec![section(&mrkdwn(str_of(data, "intro")))];
    for sub in list(data, "subscriptions") {
        let mark = if sub.get("healthy").and_then(Value::as_bool) == Some(true) {
            ":large_green_circle:"
        } else {
            ":red_circle:"
        };
        let mut text = format!(
            "{mark} *{}*  {}",
            escape(str_of(sub, "filter")),
            escape(str_of(sub, "status"))
        );
        for key in ["created", "counts", "last_delivery", "last_error"] {
            let value = str_of(sub, key);
            if !value.is_empty() {
                text.push('\n');
                text.push_str(&mrkdwn(value));
            }
        }
        blocks.push(section(&text));
    }
    (str_of(data, "intro").to_owned(), blocks, None)
}

/// The surface a set of blocks is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// A message (50 blocks).
    Message,
    /// A modal (100 blocks).
    Modal,
}

/// Checks rendered blocks against Slack's limits; each problem names its JSON pointer.
pub fn check_limits(blocks: &[Value], surface: Surface) -> Vec<String> {
    let mut problems = Vec::new();
    let max = match surface {
        Surface::Message => MAX_MESSAGE_BLOCKS,
        Surface::Modal => MAX_MODAL_BLOCKS,
    };
    if blocks.len() > max {
        problems.push(format!("{} blocks, more than {max}", blocks.len()));
    }
    for (index, block) in blocks.iter().enumerate() {
        walk(block, &format!("/blocks/{index}"), None, &mut problems);
    }
    problems
}

fn walk(value: &Value, pointer: &str, parent_type: Option<&str>, problems: &mut Vec<String>) {
    let count = |text: &Value| text.as_str().map_or(0, |t| t.chars().count());
    match value {
        Value::Object(map) => {
            let kind = map.get("type").and_then(Value::as_str);
            if matches!(kind, Some("plain_text" | "mrkdwn")) {
                let limit = match parent_type {
                    Some("header") => MAX_HEADER,
                    Some("button") => MAX_BUTTON_TEXT,
                    Some("field") => MAX_FIELD,
                    _ => MAX_TEXT,
                };
                let len = count(map.get("text").unwrap_or(&Value::Null));
                if len == 0 || len > limit {
                    problems.push(format!(
                        "{pointer}/text: {len} characters, allowed 1 to {limit}"
                    ));
                }
            }
            for id in ["action_id", "block_id"] {
                if let Some(text) = map.get(id)
                    && count(text) > MAX_ID
                {
                    problems.push(format!("{pointer}/{id}: longer than {MAX_ID}"));
                }
            }
            if kind == Some("section")
                && let Some(fields) = map.get("fields").and_then(Value::as_array)
            {
                if fields.len() > MAX_FIELDS {
                    problems.push(format!("{pointer}/fields: more than {MAX_FIELDS}"));
                }
                for (i, field) in fields.iter().enumerate() {
                    walk(
                        field,
                        &format!("{pointer}/fields/{i}"),
                        Some("field"),
                        problems,
                    );
                }
            }
            if kind == Some("context")
                && map
                    .get("elements")
                    .and_then(Value::as_array)
                    .is_some_and(|e| e.len() > MAX_CONTEXT_ELEMENTS || e.is_empty())
            {
                problems.push(format!(
                    "{pointer}/elements: 1 to {MAX_CONTEXT_ELEMENTS} allowed"
                ));
            }
            for (key, child) in map {
                if key == "fields" && kind == Some("section") {
                    continue;
                }
                walk(
                    child,
                    &format!("{pointer}/{key}"),
                    kind.or(parent_type),
                    problems,
                );
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                walk(item, &format!("{pointer}/{i}"), parent_type, problems);
            }
        }
        _ => {}
    }
}

/// Checks a modal's title, submit and close texts (24 characters) and its blocks (100).
pub fn check_modal(view: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    for key in ["title", "submit", "close"] {
        if let Some(text) = view
            .get(key)
            .and_then(|t| t.get("text"))
            .and_then(Value::as_str)
            && text.chars().count() > MAX_MODAL_TITLE
        {
            problems.push(format!("/{key}/text: longer than {MAX_MODAL_TITLE}"));
        }
    }
    let blocks = view
        .get("blocks")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    problems.extend(check_limits(blocks, Surface::Modal));
    problems
}

/// A modal title shortened to 24 characters.
pub fn modal_title(text: &str) -> Value {
    plain(text, MAX_MODAL_TITLE)
}

/// A message's blocks as readable plain text (for the sandbox driver and logs): headers
/// underlined, sections and fields as lines, context in parentheses, buttons as `[text](url)`.
pub fn to_text(blocks: &Value, fallback: &str) -> String {
    fn text_of(value: &Value) -> String {
        value
            .get("text")
            .and_then(Value::as_str)
            .map(|t| {
                t.replace("&lt;", "<")
                    .replace("&gt;", ">")
                    .replace("&amp;", "&")
            })
            .unwrap_or_default()
    }
    let Some(list) = blocks.as_array().filter(|l| !l.is_empty()) else {
        return fallback.to_owned();
    };
    let mut lines = Vec::new();
    for block in list {
        match block
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
        {
            "header" => {
                let text = text_of(&block["text"]);
                lines.push(format!("{text}\n{}", "=".repeat(text.chars().count())));
            }
            "section" => {
                if let Some(text) = block.get("text") {
                    lines.push(text_of(text));
                }
                for field in block
                    .get("fields")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    lines.push(format!("  {}", text_of(field).replace('\n', ": ")));
                }
            }
            "context" => {
                let parts: Vec<String> = block
                    .get("elements")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(text_of)
                    .collect();
                lines.push(format!("({})", parts.join(" · ")));
            }
            "actions" => {
                for element in block
                    .get("elements")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let url = element
                        .get("url")
                        .and_then(Value::as_str)
                        .unwrap_or("button");
                    lines.push(format!("[{}]({url})", text_of(&element["text"])));
                }
            }
            "divider" => lines.push("---".to_owned()),
            other => lines.push(format!("<{other} block>")),
        }
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mrkdwn_converts_bold_and_links_and_escapes_control_characters() {
        assert_eq!(
            mrkdwn("**doctor** & <!channel>"),
            "*doctor* &amp; &lt;!channel&gt;"
        );
        assert_eq!(
            mrkdwn("see [the guide](https://example.com/a?b=1&c=2)"),
            "see <https://example.com/a?b=1&amp;c=2|the guide>"
        );
        assert_eq!(
            mrkdwn("[not a link](javascript:x)"),
            "[not a link](javascript:x)"
        );
        let escaped = crate::cards::escape_markdown("**x** <@U1> [a](https://e.com)");
        let out = mrkdwn(&escaped);
        assert!(
            !out.contains('<'),
            "user text never becomes a link or mention: {out}"
        );
        assert!(out.contains("&lt;@U1&gt;"), "{out}");
    }

    #[test]
    fn shortening_ends_with_an_ellipsis_and_counts_characters() {
        assert_eq!(shorten("abc", 3), "abc");
        assert_eq!(shorten("abcd", 3), "ab…");
        assert_eq!(shorten("ééééé", 4).chars().count(), 4);
    }

    #[test]
    fn too_many_blocks_end_with_a_link_to_the_rest() {
        let blocks: Vec<Value> = (0..60).map(|i| section(&format!("line {i}"))).collect();
        let fitted = fit(blocks, MAX_MESSAGE_BLOCKS, Some("https://sn.example.com/x"));
        assert_eq!(fitted.len(), MAX_MESSAGE_BLOCKS);
        let last = fitted.last().expect("last").to_string();
        assert!(
            last.contains("11 more") && last.contains("https://sn.example.com/x"),
            "{last}"
        );
        assert!(check_limits(&fitted, Surface::Message).is_empty());
    }

    #[test]
    fn the_limit_checker_finds_each_kind_of_excess() {
        let long = "x".repeat(3001);
        let blocks = vec![
            json!({"type": "section", "text": {"type": "mrkdwn", "text": long}}),
            json!({"type": "header", "text": {"type": "plain_text", "text": "h".repeat(151)}}),
            json!({"type": "actions", "block_id": "b".repeat(256), "elements": [
                {"type": "button", "action_id": "a", "text": {"type": "plain_text", "text": "t".repeat(76)}}]}),
        ];
        let problems = check_limits(&blocks, Surface::Message);
        assert_eq!(problems.len(), 4, "{problems:?}");
        let view = json!({"title": {"type": "plain_text", "text": "A title longer than 24 chars"}, "blocks": []});
        assert_eq!(check_modal(&view).len(), 1);
        assert_eq!(
            modal_title("A title longer than 24 chars")["text"]
                .as_str()
                .map(|t| t.chars().count()),
            Some(24)
        );
    }
}
