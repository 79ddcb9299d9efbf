//! Modal views from the setup view models (`setup_step`, `setup_complete`, `setup_results`,
//! `notice`), and the way back: a submitted view's inputs as the card data the Teams card
//! would have sent.
//!
//! A view carries in `private_metadata` only the setup id and its version (JSON), never a
//! value; the step's submit verb is the view's `callback_id`; inputs are `input` blocks whose
//! `block_id` and `action_id` are the view model's input id; other buttons carry their verb as
//! `action_id` and their non-input data as `value`. Password inputs never get an initial value.
//! Every view is shortened to Slack's limits ("…") and checked with [`blocks::check_modal`].

use serde_json::{Map, Value, json};

use super::blocks::{self, MAX_BUTTON_TEXT, MAX_ID, MAX_TEXT, mrkdwn, shorten};
use crate::core::Reply;

/// `callback_id` of views that submit nothing (results, notices).
pub const INFO_CALLBACK: &str = "m365bot.info";
/// Title of every setup modal.
pub const SETUP_TITLE: &str = "m365bot setup";
/// Longest option text in a select or radio group.
const MAX_OPTION_TEXT: usize = 75;
/// Most options in a radio group (more become a select).
const MAX_RADIO_OPTIONS: usize = 10;
/// Most options in a static select.
const MAX_SELECT_OPTIONS: usize = 100;
/// Longest placeholder.
const MAX_PLACEHOLDER: usize = 150;
/// Longest input label or hint.
const MAX_LABEL: usize = 2000;
/// Longest button `value`.
const MAX_VALUE: usize = 2000;
/// Longest `private_metadata`.
const MAX_METADATA: usize = 3000;

/// The setup a view belongs to: what `private_metadata` holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SetupRef {
    /// The setup's id.
    pub setup_id: String,
    /// The version the view shows.
    pub version: i64,
}

impl SetupRef {
    /// Reads `private_metadata` (`None` when empty or not ours).
    pub fn parse(metadata: Option<&str>) -> Option<Self> {
        serde_json::from_str(metadata?).ok()
    }

    /// The setup id and version of a view model's first action carrying them.
    fn of(data: &Value) -> Option<Self> {
        let mut found = None;
        find_setup_ref(data, &mut found);
        found
    }
}

fn find_setup_ref(value: &Value, found: &mut Option<SetupRef>) {
    if found.is_some() {
        return;
    }
    match value {
        Value::Object(map) => {
            if let (Some(id), Some(version)) = (
                map.get("setup_id").and_then(Value::as_str),
                map.get("version").and_then(Value::as_i64),
            ) {
                *found = Some(SetupRef {
                    setup_id: id.to_owned(),
                    version,
                });
                return;
            }
            for child in map.values() {
                find_setup_ref(child, found);
            }
        }
        Value::Array(items) => {
            for item in items {
                find_setup_ref(item, found);
            }
        }
        _ => {}
    }
}

fn plain(text: &str, max: usize) -> Value {
    json!({"type": "plain_text", "text": shorten(non_empty(text), max), "emoji": true})
}

fn non_empty(text: &str) -> &str {
    if text.trim().is_empty() { "-" } else { text }
}

fn str_of<'a>(data: &'a Value, key: &str) -> &'a str {
    data.get(key).and_then(Value::as_str).unwrap_or_default()
}

fn list<'a>(data: &'a Value, key: &str) -> &'a [Value] {
    data.get(key)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// A modal view: title, optional submit, close, metadata and blocks, shortened to the limits.
fn view(
    callback_id: &str,
    submit: Option<&str>,
    close: &str,
    setup: Option<&SetupRef>,
    blocks: Vec<Value>,
) -> Value {
    let metadata = setup
        .and_then(|s| serde_json::to_string(s).ok())
        .filter(|m| m.len() <= MAX_METADATA)
        .unwrap_or_default();
    let mut view = json!({
        "type": "modal",
        "callback_id": shorten(callback_id, MAX_ID),
        "title": blocks::modal_title(SETUP_TITLE),
        "close": blocks::modal_title(close),
        "private_metadata": metadata,
        "blocks": blocks::fit(blocks, blocks::MAX_MODAL_BLOCKS, None),
    });
    if let Some(submit) = submit {
        view["submit"] = blocks::modal_title(submit);
    }
    let problems = blocks::check_modal(&view);
    if !problems.is_empty() {
        // Every builder shortens; if something still slipped through, say so rather than let
        // Slack refuse the whole view.
        tracing::warn!(
            ?problems,
            "a modal exceeded Slack's limits; showing a short one"
        );
        return json!({
            "type": "modal",
            "callback_id": INFO_CALLBACK,
            "title": blocks::modal_title(SETUP_TITLE),
            "close": blocks::modal_title("Close"),
            "private_metadata": view["private_metadata"],
            "blocks": [blocks::section(":warning: This step is too large to show in Slack. Type `/m365 setup status`, or continue in Teams.")],
        });
    }
    view
}

/// The "Checking…" view opened at once with a command's `trigger_id`.
pub fn checking(what: &str) -> Value {
    view(
        INFO_CALLBACK,
        None,
        "Close",
        None,
        vec![blocks::section(&format!(
            ":hourglass_flowing_sand: Checking {}…",
            blocks::escape(what)
        ))],
    )
}

/// The "Working…" view answered while a step's slow upstream calls run.
pub fn working(setup: Option<&SetupRef>, step: &str) -> Value {
    view(
        INFO_CALLBACK,
        None,
        "Close",
        setup,
        vec![
            blocks::header("Working on it"),
            blocks::section(&format!(
                ":hourglass_flowing_sand: I am working on *{}* (creating and verifying). This window shows the result when it is done.",
                blocks::escape(step)
            )),
        ],
    )
}

/// The view for a window whose setup moved on elsewhere: nothing was written.
pub fn out_of_date(current: Option<&SetupRef>) -> Value {
    let mut blocks = vec![
        blocks::header("This window is out of date"),
        blocks::section(
            ":warning: The setup moved on in another window (or another admin answered this step), so nothing was read from this one and nothing was changed.",
        ),
    ];
    if current.is_some() {
        blocks.push(json!({"type": "actions", "elements": [{
            "type": "button", "action_id": "setup.refresh", "text": plain("Show the current step", MAX_BUTTON_TEXT),
            "value": "{}", "style": "primary",
        }]}));
    }
    view(INFO_CALLBACK, None, "Close", current, blocks)
}

/// The modal view of a reply of the setup module (or a notice).
pub fn render(reply: &Reply) -> Value {
    let Reply::Card { template, data } = reply;
    match *template {
        "setup_step" => step(data),
        "setup_complete" => complete(data),
        _ => {
            // Results and notices: the message blocks, plus the buttons Slack can carry here.
            let message = blocks::render(reply);
            let mut shown: Vec<Value> = message
                .blocks
                .into_iter()
                .filter(|b| !b.to_string().contains("in Teams for now"))
                .collect();
            let actions = list(data, "actions");
            shown.extend(buttons(actions));
            view(
                INFO_CALLBACK,
                None,
                "Close",
                SetupRef::of(data).as_ref(),
                shown,
            )
        }
    }
}

/// True for a `setup_step` reply that shows `step` again with an error beside a field.
pub fn field_errors(reply: &Reply, step: &str) -> Option<Map<String, Value>> {
    let Reply::Card {
        template: "setup_step",
        data,
    } = reply
    else {
        return None;
    };
    if str_of(data, "title") != step {
        return None;
    }
    let errors: Map<String, Value> = list(data, "inputs")
        .iter()
        .filter_map(|input| {
            let error = input.get("error").and_then(Value::as_str)?;
            Some((
                str_of(input, "id").to_owned(),
                json!(shorten(error, MAX_LABEL)),
            ))
        })
        .collect();
    (!errors.is_empty()).then_some(errors)
}

/// True for the card the setup answers to a stale window (a double submit, another window).
pub fn is_already_answered(reply: &Reply) -> bool {
    let Reply::Card { template, data } = reply;
    matches!(*template, "setup_step" | "setup_complete")
        && list(data, "notes")
            .iter()
            .any(|n| n.as_str() == Some(crate::setup::flow::ALREADY_ANSWERED))
}

/// The setup id and version a reply's actions carry.
pub fn setup_ref(reply: &Reply) -> Option<SetupRef> {
    let Reply::Card { data, .. } = reply;
    SetupRef::of(data)
}

/// The extra data of an action (everything but the setup id and version).
fn extras(action: &Value) -> Map<String, Value> {
    action
        .get("data")
        .and_then(Value::as_object)
        .map(|data| {
            data.iter()
                .filter(|(k, _)| k.as_str() != "setup_id" && k.as_str() != "version")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// The step's submit action: the one that sends the inputs, else the first positive one
/// whose data is all default (false or empty).
fn submit_action(actions: &[Value]) -> Option<usize> {
    let has_verb = |a: &Value| a.get("verb").and_then(Value::as_str).is_some();
    actions
        .iter()
        .position(|a| has_verb(a) && a["with_inputs"].as_bool() == Some(true))
        .or_else(|| {
            actions.iter().position(|a| {
                has_verb(a)
                    && str_of(a, "style") == "positive"
                    && extras(a)
                        .values()
                        .all(|v| matches!(v, Value::Bool(false) | Value::Null))
            })
        })
}

/// Buttons of view-model actions: verbs as `action_id` (numbered when repeated), data as
/// `value`, URLs as link buttons.
fn buttons(actions: &[Value]) -> Vec<Value> {
    let mut elements = Vec::new();
    let mut used: Vec<String> = Vec::new();
    for action in actions {
        let title = str_of(action, "title");
        let style = match str_of(action, "style") {
            "positive" => Some("primary"),
            "destructive" => Some("danger"),
            _ => None,
        };
        let mut button = match (
            action.get("verb").and_then(Value::as_str),
            str_of(action, "url"),
        ) {
            (Some(verb), _) => {
                let mut id = verb.to_owned();
                let mut n = 1;
                while used.contains(&id) {
                    n += 1;
                    id = format!("{verb}~{n}");
                }
                used.push(id.clone());
                let mut value = Value::Object(extras(action));
                if action["with_inputs"].as_bool() == Some(true) {
                    value["with_inputs"] = json!(true);
                }
                json!({"type": "button", "action_id": shorten(&id, MAX_ID),
                       "text": plain(title, MAX_BUTTON_TEXT), "value": shorten(&value.to_string(), MAX_VALUE)})
            }
            (None, url) if url.starts_with("http") => {
                json!({"type": "button", "action_id": format!("link~{}", elements.len()),
                       "text": plain(title, MAX_BUTTON_TEXT), "url": shorten(url, MAX_TEXT)})
            }
            _ => continue,
        };
        if let Some(style) = style {
            button["style"] = json!(style);
        }
        elements.push(button);
    }
    if elements.is_empty() {
        return Vec::new();
    }
    // An actions block holds at most 25 elements.
    elements
        .chunks(25)
        .map(|chunk| json!({"type": "actions", "elements": chunk}))
        .collect()
}

fn option(title: &str, value: &str) -> Value {
    json!({"text": plain(title, MAX_OPTION_TEXT), "value": shorten(value, MAX_ID)})
}

/// The `input` block of one view-model input.
fn input_block(input: &Value) -> Value {
    let id = shorten(str_of(input, "id"), MAX_ID);
    let label = str_of(input, "label");
    let value = str_of(input, "value");
    let element = if input["toggle"].as_bool() == Some(true) {
        let only = option(label, "true");
        let mut element = json!({"type": "checkboxes", "action_id": id, "options": [only]});
        if value == "true" {
            element["initial_options"] = json!([only]);
        }
        element
    } else if input["choice"].as_bool() == Some(true) {
        let options: Vec<Value> = list(input, "choices")
            .iter()
            .take(MAX_SELECT_OPTIONS)
            .map(|c| option(str_of(c, "title"), str_of(c, "value")))
            .collect();
        let radio = input["expanded"].as_bool() == Some(true) && options.len() <= MAX_RADIO_OPTIONS;
        let mut element = json!({
            "type": if radio { "radio_buttons" } else { "static_select" },
            "action_id": id, "options": options,
        });
        if !radio {
            element["placeholder"] = plain("Choose…", MAX_PLACEHOLDER);
        }
        if let Some(initial) = options.iter().find(|o| o["value"].as_str() == Some(value)) {
            element["initial_option"] = initial.clone();
        }
        element
    } else {
        let mut element = json!({"type": "plain_text_input", "action_id": id});
        // A password is never put back into a view.
        if input["password"].as_bool() != Some(true) && !value.is_empty() {
            element["initial_value"] = json!(shorten(value, MAX_TEXT));
        }
        if let Some(placeholder) = input.get("placeholder").and_then(Value::as_str) {
            element["placeholder"] = plain(placeholder, MAX_PLACEHOLDER);
        }
        element
    };
    let mut block = json!({
        "type": "input", "block_id": id, "optional": true,
        "label": plain(label, MAX_LABEL), "element": element,
    });
    if input["password"].as_bool() == Some(true) {
        block["hint"] = plain(
            "Typed only here; stored encrypted and never shown in Slack again.",
            MAX_LABEL,
        );
    }
    block
}

fn facts_of(data: &Value, key: &str, label: &str, value: &str) -> Vec<(String, String)> {
    list(data, key)
        .iter()
        .map(|f| (str_of(f, label).to_owned(), str_of(f, value).to_owned()))
        .filter(|(_, v)| !v.is_empty())
        .collect()
}

fn notes_block(data: &Value) -> Option<Value> {
    let notes: Vec<String> = list(data, "notes")
        .iter()
        .filter_map(Value::as_str)
        .map(mrkdwn)
        .collect();
    (!notes.is_empty()).then(|| blocks::context(&notes))
}

/// A `setup_step` view model as a modal.
fn step(data: &Value) -> Value {
    let setup = SetupRef::of(data);
    let actions = list(data, "actions");
    let submit = submit_action(actions);
    let mut shown = vec![
        blocks::context(&[blocks::escape(str_of(data, "progress"))]),
        blocks::header(str_of(data, "title")),
    ];
    shown.extend(notes_block(data));
    if let Some(error) = data.get("error").filter(|e| e.is_object()) {
        let mut text = format!(":x: *{}*", blocks::escape(str_of(error, "message")));
        let fix = str_of(error, "fix");
        if !fix.is_empty() {
            text.push_str("\n_Fix:_ ");
            text.push_str(&mrkdwn(fix));
        }
        shown.push(blocks::section(&text));
    }
    let text = str_of(data, "text");
    if !text.is_empty() {
        shown.push(blocks::section(&mrkdwn(text)));
    }
    shown.extend(blocks::fields(&facts_of(data, "facts", "title", "value")));
    for input in list(data, "inputs") {
        shown.push(input_block(input));
        if let Some(error) = input.get("error").and_then(Value::as_str) {
            shown.push(blocks::context(&[format!(":x: {}", mrkdwn(error))]));
        }
    }
    let others: Vec<Value> = actions
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != submit)
        .map(|(_, a)| a.clone())
        .collect();
    shown.extend(buttons(&others));
    let (callback, submit_text) = match submit.map(|i| &actions[i]) {
        Some(action) => (str_of(action, "verb"), Some(str_of(action, "title"))),
        None => (INFO_CALLBACK, None),
    };
    view(callback, submit_text, "Close", setup.as_ref(), shown)
}

/// A `setup_complete` view model as a modal: the summary, the admin-center values and the
/// buttons; never a secret (the Reveal page shows them).
fn complete(data: &Value) -> Value {
    let setup = SetupRef::of(data);
    let mut shown = vec![blocks::header(str_of(data, "title"))];
    shown.push(blocks::section(&mrkdwn(str_of(data, "text"))));
    shown.push(blocks::section(&format!(
        ":lock: {}",
        mrkdwn(str_of(data, "reveal_text"))
    )));
    if let Some(remaining) = data.get("remaining") {
        shown.push(blocks::section(&mrkdwn(str_of(remaining, "text"))));
        shown.extend(blocks::fields(&facts_of(
            remaining, "items", "label", "value",
        )));
    }
    if let Some(center) = data.get("admin_center") {
        shown.push(blocks::section(&format!(
            "*{}*\n{}",
            blocks::escape(str_of(center, "title")),
            blocks::escape(str_of(center, "where"))
        )));
        shown.extend(blocks::fields(&facts_of(
            center, "values", "label", "value",
        )));
        let advice: Vec<String> = list(center, "advice")
            .iter()
            .filter_map(Value::as_str)
            .map(mrkdwn)
            .collect();
        if !advice.is_empty() {
            shown.push(blocks::context(&advice));
        }
    }
    shown.extend(notes_block(data));
    let handed = str_of(data, "handed_over_to");
    if !handed.is_empty() {
        shown.push(blocks::context(&[blocks::escape(handed)]));
    }
    let mut actions: Vec<Value> = list(data, "actions").to_vec();
    if let Some(ask) = data.get("ask_repository").filter(|a| a.is_object()) {
        shown.push(blocks::section(&mrkdwn(str_of(ask, "reason"))));
        shown.push(input_block(&json!({"id": "repository_id", "label": "Repository ID", "value": "", "placeholder": "dev12345"})));
        let error = str_of(data, "repository_error");
        if !error.is_empty() {
            shown.push(blocks::context(&[format!(":x: {}", mrkdwn(error))]));
        }
        if let Some(action) = ask.get("action") {
            actions.push(action.clone());
        }
    }
    if data["handover"].as_bool() == Some(true) {
        shown.push(input_block(&json!({"id": "handover_email", "label": "Hand over to (Microsoft 365 admin's e-mail)",
            "value": str_of(data, "handover_email"), "placeholder": "admin@contoso.onmicrosoft.com"})));
        let error = str_of(data, "handover_error");
        if !error.is_empty() {
            shown.push(blocks::context(&[format!(":x: {}", mrkdwn(error))]));
        }
    }
    shown.extend(buttons(&actions));
    view(INFO_CALLBACK, None, "Done", setup.as_ref(), shown)
}

/// The card data of a submitted view or a click in it: the setup id and version from
/// `private_metadata`, then the inputs (`state.values`), as the Teams card sends them.
pub fn submitted_data(setup: Option<&SetupRef>, values: &Map<String, Value>) -> Value {
    let mut data = Map::new();
    if let Some(setup) = setup {
        data.insert("setup_id".to_owned(), json!(setup.setup_id));
        data.insert("version".to_owned(), json!(setup.version));
    }
    for (block_id, actions) in values {
        let Some(actions) = actions.as_object() else {
            continue;
        };
        for state in actions.values() {
            let value = match state.get("type").and_then(Value::as_str) {
                Some("checkboxes") => {
                    let on = state
                        .get("selected_options")
                        .and_then(Value::as_array)
                        .is_some_and(|o| o.iter().any(|o| o["value"] == "true"));
                    json!(if on { "true" } else { "false" })
                }
                Some("radio_buttons" | "static_select") => state
                    .pointer("/selected_option/value")
                    .cloned()
                    .unwrap_or(json!("")),
                _ => state
                    .get("value")
                    .cloned()
                    .filter(Value::is_string)
                    .unwrap_or(json!("")),
            };
            data.insert(block_id.clone(), value);
        }
    }
    Value::Object(data)
}

/// The verb of a button's `action_id` (`setup.cross_scope~2` → `setup.cross_scope`).
pub fn verb_of(action_id: &str) -> &str {
    action_id.split('~').next().unwrap_or(action_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step_reply(inputs: Value, actions: Value) -> Reply {
        Reply::Card {
            template: "setup_step",
            data: json!({"title": "Outbound Entra app", "progress": "Setup · step 4 of 11", "tone": "default",
                "text": "The **outbound app**", "facts": [], "notes": [], "error": null,
                "inputs": inputs, "actions": actions}),
        }
    }

    #[test]
    fn a_step_becomes_inputs_a_submit_and_buttons_without_the_password() {
        let reply = step_reply(
            json!([
                {"toggle": false, "choice": true, "password": false, "id": "mode", "label": "How", "value": "create",
                 "choices": [{"title": "Create it for me", "value": "create"}, {"title": "Use an existing one", "value": "existing"}], "expanded": true, "error": null},
                {"toggle": false, "choice": false, "password": true, "id": "client_secret", "label": "Secret", "value": "leaked?", "error": "The client secret is wrong"}
            ]),
            json!([
                {"title": "Continue", "verb": "setup.app", "style": "positive", "data": {"setup_id": "s1", "version": 4}, "with_inputs": true},
                {"title": "Back", "verb": "setup.back", "style": "default", "data": {"setup_id": "s1", "version": 4}, "with_inputs": false}
            ]),
        );
        let view = render(&reply);
        assert_eq!(view["callback_id"], "setup.app");
        assert_eq!(view["submit"]["text"], "Continue");
        assert_eq!(view["private_metadata"], r#"{"setup_id":"s1","version":4}"#);
        let text = view.to_string();
        assert!(!text.contains("leaked?"), "{text}");
        assert!(
            text.contains("radio_buttons") && text.contains("\"setup.back\""),
            "{text}"
        );
        assert!(blocks::check_modal(&view).is_empty());
        let errors = field_errors(&reply, "Outbound Entra app").expect("errors");
        assert_eq!(errors["client_secret"], "The client secret is wrong");
        assert!(field_errors(&reply, "Another step").is_none());
    }

    #[test]
    fn submitted_state_becomes_card_data() {
        let values = json!({
            "mode": {"mode": {"type": "radio_buttons", "selected_option": {"value": "existing"}}},
            "client_id": {"client_id": {"type": "plain_text_input", "value": "abc"}},
            "client_secret": {"client_secret": {"type": "plain_text_input", "value": null}},
            "test_environment": {"test_environment": {"type": "checkboxes", "selected_options": [{"value": "true"}]}}
        });
        let setup = SetupRef {
            setup_id: "s1".to_owned(),
            version: 2,
        };
        let data = submitted_data(Some(&setup), values.as_object().expect("map"));
        assert_eq!(
            data,
            json!({"setup_id": "s1", "version": 2, "mode": "existing", "client_id": "abc",
                   "client_secret": "", "test_environment": "true"})
        );
        assert_eq!(verb_of("setup.cross_scope~2"), "setup.cross_scope");
    }

    #[test]
    fn long_texts_are_shortened_not_refused() {
        let long = "x".repeat(5000);
        let reply = step_reply(
            json!([{"toggle": false, "choice": true, "password": false, "id": "record", "label": long, "value": "",
                    "choices": [{"title": long, "value": "a"}], "expanded": false, "error": null}]),
            json!([{"title": long, "verb": "setup.record", "style": "positive", "data": {"setup_id": "s", "version": 1}, "with_inputs": true}]),
        );
        let view = render(&reply);
        assert!(
            blocks::check_modal(&view).is_empty(),
            "{:?}",
            blocks::check_modal(&view)
        );
        assert_eq!(
            view["submit"]["text"].as_str().map(|t| t.chars().count()),
            Some(24)
        );
    }
}
