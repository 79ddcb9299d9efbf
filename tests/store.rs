//! Storage contract: the same behaviour on SQLite and PostgreSQL (see `support::db`).
mod support;

use std::collections::HashSet;

use m365bot::db::Db;
use m365bot::db::conversations::ConversationRef;
use support::db::{TestDb, test_databases};

/// A channel conversation reference with every optional field set.
fn channel_ref(conversation_id: &str, team_id: &str) -> ConversationRef {
    ConversationRef {
        conversation_id: conversation_id.to_owned(),
        platform: "msteams".to_owned(),
        service_url: "https://smba.example.test/emea/".to_owned(),
        tenant_id: "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee".to_owned(),
        conversation_type: "channel".to_owned(),
        team_id: Some(team_id.to_owned()),
        channel_id: Some(conversation_id.to_owned()),
        bot_id: "28:11111111-2222-3333-4444-555555555555".to_owned(),
        user_id: Some("29:user-one".to_owned()),
        user_aad_object_id: Some("00000000-0000-0000-0000-00000000aaaa".to_owned()),
    }
}

/// A personal conversation reference: no team, no channel, no user object id.
fn personal_ref(conversation_id: &str) -> ConversationRef {
    ConversationRef {
        conversation_id: conversation_id.to_owned(),
        platform: "msteams".to_owned(),
        service_url: "https://smba.example.test/amer/".to_owned(),
        tenant_id: "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee".to_owned(),
        conversation_type: "personal".to_owned(),
        team_id: None,
        channel_id: None,
        bot_id: "28:11111111-2222-3333-4444-555555555555".to_owned(),
        user_id: Some("29:user-two".to_owned()),
        user_aad_object_id: None,
    }
}

async fn get(test: &TestDb, conversation_id: &str) -> Option<ConversationRef> {
    test.db
        .conversation(conversation_id)
        .await
        .unwrap_or_else(|error| panic!("[{}] get {conversation_id}: {error}", test.label))
}

async fn upsert(test: &TestDb, reference: &ConversationRef) {
    test.db
        .upsert_conversation(reference)
        .await
        .unwrap_or_else(|error| panic!("[{}] upsert: {error}", test.label));
}

async fn count(test: &TestDb) -> i64 {
    test.db
        .conversation_count()
        .await
        .unwrap_or_else(|error| panic!("[{}] count: {error}", test.label))
}

#[tokio::test]
async fn upsert_inserts_then_get_returns_every_field() {
    for test in test_databases().await {
        let label = test.label;
        assert_eq!(count(&test).await, 0, "[{label}] a fresh database is empty");
        assert_eq!(get(&test, "19:none").await, None, "[{label}] unknown id");

        let channel = channel_ref("19:general@thread.tacv2", "19:team@thread.tacv2");
        let personal = personal_ref("a:1personal");
        upsert(&test, &channel).await;
        upsert(&test, &personal).await;

        assert_eq!(
            get(&test, &channel.conversation_id).await,
            Some(channel),
            "[{label}]"
        );
        assert_eq!(
            get(&test, &personal.conversation_id).await,
            Some(personal),
            "[{label}]"
        );
        assert_eq!(count(&test).await, 2, "[{label}]");
    }
}

#[tokio::test]
async fn upsert_updates_and_keeps_known_optional_fields() {
    for test in test_databases().await {
        let label = test.label;
        let first = channel_ref("19:general@thread.tacv2", "19:team@thread.tacv2");
        upsert(&test, &first).await;

        // A later activity from the same conversation without the optional fields: the latest
        // serviceUrl, tenant, type and bot id win; known team, channel and user are kept.
        let later = ConversationRef {
            service_url: "https://smba.example.test/apac/".to_owned(),
            tenant_id: "ffffffff-bbbb-cccc-dddd-eeeeeeeeeeee".to_owned(),
            conversation_type: "groupChat".to_owned(),
            bot_id: "28:other-bot".to_owned(),
            team_id: None,
            channel_id: None,
            user_id: None,
            user_aad_object_id: None,
            ..first.clone()
        };
        upsert(&test, &later).await;
        let stored = get(&test, &first.conversation_id).await;
        let expected = ConversationRef {
            team_id: first.team_id.clone(),
            channel_id: first.channel_id.clone(),
            user_id: first.user_id.clone(),
            user_aad_object_id: first.user_aad_object_id.clone(),
            ..later.clone()
        };
        assert_eq!(
            stored,
            Some(expected),
            "[{label}] COALESCE keeps known fields"
        );
        assert_eq!(count(&test).await, 1, "[{label}] an update adds no row");

        // New values for the optional fields replace the old ones.
        let newer = ConversationRef {
            team_id: Some("19:moved@thread.tacv2".to_owned()),
            channel_id: Some("19:other@thread.tacv2".to_owned()),
            user_id: Some("29:user-three".to_owned()),
            user_aad_object_id: Some("00000000-0000-0000-0000-00000000bbbb".to_owned()),
            ..later
        };
        upsert(&test, &newer).await;
        assert_eq!(
            get(&test, &first.conversation_id).await,
            Some(newer),
            "[{label}]"
        );
        assert_eq!(count(&test).await, 1, "[{label}]");
    }
}

#[tokio::test]
async fn delete_removes_one_conversation_and_says_whether_it_existed() {
    for test in test_databases().await {
        let label = test.label;
        let keep = personal_ref("a:keep");
        let gone = personal_ref("a:gone");
        upsert(&test, &keep).await;
        upsert(&test, &gone).await;

        let deleted = test.db.delete_conversation("a:gone").await;
        assert!(
            matches!(deleted, Ok(true)),
            "[{label}] first delete: {deleted:?}"
        );
        let again = test.db.delete_conversation("a:gone").await;
        assert!(
            matches!(again, Ok(false)),
            "[{label}] second delete: {again:?}"
        );
        let unknown = test.db.delete_conversation("a:never").await;
        assert!(
            matches!(unknown, Ok(false)),
            "[{label}] unknown: {unknown:?}"
        );

        assert_eq!(get(&test, "a:gone").await, None, "[{label}]");
        assert_eq!(get(&test, "a:keep").await, Some(keep), "[{label}]");
        assert_eq!(count(&test).await, 1, "[{label}]");
    }
}

#[tokio::test]
async fn delete_by_team_removes_only_that_teams_conversations() {
    for test in test_databases().await {
        let label = test.label;
        let team = "19:team-a@thread.tacv2";
        upsert(&test, &channel_ref("19:a-general@thread.tacv2", team)).await;
        upsert(&test, &channel_ref("19:a-random@thread.tacv2", team)).await;
        let other_team = channel_ref("19:b-general@thread.tacv2", "19:team-b@thread.tacv2");
        upsert(&test, &other_team).await;
        let personal = personal_ref("a:personal");
        upsert(&test, &personal).await;

        let removed = test.db.delete_team_conversations(team).await;
        assert!(matches!(removed, Ok(2)), "[{label}] removed: {removed:?}");
        assert_eq!(count(&test).await, 2, "[{label}]");
        assert_eq!(
            get(&test, "19:a-general@thread.tacv2").await,
            None,
            "[{label}]"
        );
        assert_eq!(
            get(&test, "19:a-random@thread.tacv2").await,
            None,
            "[{label}]"
        );
        assert_eq!(
            get(&test, &other_team.conversation_id).await,
            Some(other_team),
            "[{label}] other team kept"
        );
        assert_eq!(
            get(&test, "a:personal").await,
            Some(personal),
            "[{label}] personal kept"
        );

        let none_left = test.db.delete_team_conversations(team).await;
        assert!(matches!(none_left, Ok(0)), "[{label}] again: {none_left:?}");
    }
}

#[tokio::test]
async fn migrations_can_run_again() {
    for test in test_databases().await {
        let label = test.label;
        upsert(&test, &personal_ref("a:before")).await;
        for round in 1..=2 {
            let result = test.db.migrate().await;
            assert!(
                result.is_ok(),
                "[{label}] migrate #{round} again: {result:?}"
            );
        }
        // Also through a new pool, as a restarted bot would.
        let reopened = Db::connect(&test.url, 2).await.expect("reconnect");
        let result = reopened.migrate().await;
        assert!(
            result.is_ok(),
            "[{label}] migrate on a new pool: {result:?}"
        );
        let kept = reopened.conversation("a:before").await.expect("get");
        assert!(
            kept.is_some(),
            "[{label}] data survives re-running migrations"
        );
        reopened.pool.close().await;
    }
}

#[tokio::test]
async fn connect_creates_a_missing_sqlite_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("new.db");
    assert!(!path.exists(), "precondition: no file yet");

    let db = Db::connect(&format!("sqlite://{}", path.display()), 1)
        .await
        .expect("connect creates the file");
    assert!(path.exists(), "the SQLite file was created");
    db.migrate().await.expect("migrate the new file");
    db.upsert_conversation(&personal_ref("a:1"))
        .await
        .expect("write");
    assert_eq!(db.conversation_count().await.expect("count"), 1);
    db.pool.close().await;
}

#[tokio::test]
async fn ping_answers_and_fails_once_the_pool_is_closed() {
    for test in test_databases().await {
        let label = test.label;
        let answer = test.db.ping().await;
        assert!(answer.is_ok(), "[{label}] ping: {answer:?}");
        test.db.pool.close().await;
        let closed = test.db.ping().await;
        assert!(closed.is_err(), "[{label}] ping on a closed pool must fail");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_upserts_of_one_conversation_leave_one_row() {
    const TASKS: usize = 8;
    for test in test_databases().await {
        let label = test.label;
        // A pool as wide as the number of writers, so they really race.
        let db = Db::connect(&test.url, TASKS as u32)
            .await
            .expect("a wider pool");
        let start = std::sync::Arc::new(tokio::sync::Barrier::new(TASKS));
        let mut tasks = Vec::new();
        for n in 0..TASKS {
            let db = db.clone();
            let start = start.clone();
            tasks.push(tokio::spawn(async move {
                let reference = ConversationRef {
                    service_url: format!("https://smba.example.test/region-{n}/"),
                    ..channel_ref("19:raced@thread.tacv2", "19:team@thread.tacv2")
                };
                start.wait().await;
                db.upsert_conversation(&reference).await
            }));
        }
        for task in tasks {
            let result = task.await.expect("task finished");
            assert!(result.is_ok(), "[{label}] concurrent upsert: {result:?}");
        }
        assert_eq!(
            count(&test).await,
            1,
            "[{label}] one row after {TASKS} upserts"
        );
        let stored = get(&test, "19:raced@thread.tacv2")
            .await
            .expect("row present");
        let written: HashSet<String> = (0..TASKS)
            .map(|n| format!("https://smba.example.test/region-{n}/"))
            .collect();
        assert!(
            written.contains(&stored.service_url),
            "[{label}] stored serviceUrl is one that was written: {}",
            stored.service_url
        );
        db.pool.close().await;
    }
}
