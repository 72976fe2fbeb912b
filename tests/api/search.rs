//! `GET /chat/search`: words in English and Russian, case and diacritics folded, the last word
//! as a prefix, phrases and exclusions; only chats the caller is in now, never a deleted
//! message or an edited one's old text; pages by cursor; highlights safe for a browser; bad
//! queries refused by name; searches rate-limited.

use reqwest::StatusCode;
use serde_json::{Value, json};
use windi_shared::{
    AppState,
    config::LimitSettings,
    domain::search,
    service::limits::{FakeRelativeClock, LimitClock, Limits},
    store,
};
use windi_tests::{TestApp, TestUser};

/// The search's hits: (message id, text, highlight), newest first, and `next`.
async fn search(
    app: &TestApp,
    user: &TestUser,
    query: &str,
) -> (Vec<(i64, String, String)>, Value) {
    let (status, body) = app.get(&format!("/chat/search?{query}"), user).await;
    assert_eq!(status, StatusCode::OK, "{query}: {body}");
    let hits = body["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            assert_eq!(h["chat_id"], h["message"]["chat_id"], "{h}");
            (
                h["message"]["id"].as_i64().unwrap(),
                h["message"]["text"].as_str().unwrap().to_owned(),
                h["highlight"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    (hits, body["next"].clone())
}

async fn texts(app: &TestApp, user: &TestUser, q: &str) -> Vec<String> {
    let query = format!("q={}", urlencode(q));
    search(app, user, &query)
        .await
        .0
        .into_iter()
        .map(|(_, text, _)| text)
        .collect()
}

fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn id(message: &Value) -> i64 {
    message["id"].as_i64().unwrap()
}

#[tokio::test]
async fn words_in_english_and_russian_fold_case_and_accents_with_the_last_word_a_prefix() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (app.user("Alice").await, app.user("Bob").await);
    for text in [
        "The BUILD is green again",
        "Ёлка стоит в углу",
        "встретимся завтра у ЕЛКИ",
        "a café for lunch tomorrow",
        "see you tomorrow at five",
        "build failed, see the log",
    ] {
        app.send_to_user(&alice, &bob, text).await;
    }

    // Newest first; case folded.
    assert_eq!(
        texts(&app, &bob, "build").await,
        ["build failed, see the log", "The BUILD is green again"]
    );
    // ё and е are one letter; é and e too; the last word is a prefix (елк → елка, елки).
    assert_eq!(
        texts(&app, &bob, "елк").await,
        ["встретимся завтра у ЕЛКИ", "Ёлка стоит в углу"]
    );
    assert_eq!(texts(&app, &bob, "ЁЛКА").await, ["Ёлка стоит в углу"]);
    assert_eq!(
        texts(&app, &bob, "cafe").await,
        ["a café for lunch tomorrow"]
    );
    // A prefix only for the last word: "tom" alone finds tomorrow, "tom five" does not.
    assert_eq!(
        texts(&app, &bob, "tom").await,
        ["see you tomorrow at five", "a café for lunch tomorrow"]
    );
    assert!(texts(&app, &bob, "tom five").await.is_empty());
    assert_eq!(
        texts(&app, &bob, "five tom").await,
        ["see you tomorrow at five"]
    );
    // Phrases keep their order; exclusions leave messages out.
    assert_eq!(
        texts(&app, &bob, "\"see you tomorrow\"").await,
        ["see you tomorrow at five"]
    );
    assert!(texts(&app, &bob, "\"tomorrow you see\"").await.is_empty());
    assert_eq!(
        texts(&app, &bob, "see -log").await,
        ["see you tomorrow at five"]
    );
    assert_eq!(
        texts(&app, &bob, "build -\"is green\"").await,
        ["build failed, see the log"]
    );

    // Highlights mark the matched words, whatever their case.
    let (hits, _) = search(&app, &bob, "q=build").await;
    assert_eq!(hits[1].2, "The <mark>BUILD</mark> is green again");
    let (hits, _) = search(&app, &bob, &format!("q={}", urlencode("ёлк"))).await;
    assert_eq!(hits[0].2, "встретимся завтра у <mark>ЕЛКИ</mark>");
    assert_eq!(hits[1].2, "<mark>Ёлка</mark> стоит в углу");
}

#[tokio::test]
async fn only_chats_the_caller_is_in_now_and_never_a_deleted_message_or_old_text() {
    let app = TestApp::spawn().await;
    let (alice, bob, carol) = (
        app.user("Alice").await,
        app.user("Bob").await,
        app.user("Carol").await,
    );
    let private = app.send_to_user(&alice, &bob, "zebra in private").await;
    let group = app.group(&alice, &[&bob, &carol]).await;
    let in_group = app.send_to_chat(&alice, group, "zebra in the group").await;
    let theirs = app.send_to_user(&bob, &carol, "zebra between them").await;

    assert_eq!(
        texts(&app, &carol, "zebra").await,
        ["zebra between them", "zebra in the group"]
    );
    // One chat only; a chat the caller is not in is a 404, as for its history.
    let (hits, _) = search(&app, &bob, &format!("q=zebra&chat_id={group}")).await;
    assert_eq!(
        hits.iter().map(|h| h.0).collect::<Vec<_>>(),
        [id(&in_group)]
    );
    let private_chat = private["chat_id"].as_i64().unwrap();
    let (status, body) = app
        .get(
            &format!("/chat/search?q=zebra&chat_id={private_chat}"),
            &carol,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, _) = app
        .get("/chat/search?q=zebra&chat_id=999999999", &carol)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Removed from the group: its messages are out of reach, old ones included.
    let (status, body) = app
        .delete(&format!("/chat/group/{group}/members/{}", carol.id), &alice)
        .await;
    assert!(status.is_success(), "{body}");
    assert_eq!(texts(&app, &carol, "zebra").await, ["zebra between them"]);

    // Edited: found by its new text only. Deleted: never found.
    let (status, body) = app
        .patch(
            &format!("/chat/message/{}", id(&theirs)),
            &bob,
            json!({"text": "giraffe between them"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(texts(&app, &carol, "zebra").await.is_empty());
    assert_eq!(
        texts(&app, &carol, "giraffe").await,
        ["giraffe between them"]
    );
    let (status, body) = app
        .delete(&format!("/chat/message/{}", id(&private)), &alice)
        .await;
    assert!(status.is_success(), "{body}");
    assert_eq!(texts(&app, &bob, "zebra").await, ["zebra in the group"]);
}

#[tokio::test]
async fn pages_follow_next_newest_first_until_it_is_null() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (app.user("Alice").await, app.user("Bob").await);
    let mut sent = Vec::new();
    for i in 0..25 {
        sent.push(id(&app
            .send_to_user(&alice, &bob, &format!("report number {i}"))
            .await));
        if i % 5 == 0 {
            app.send_to_user(&bob, &alice, "unrelated").await;
        }
    }
    let mut seen = Vec::new();
    let mut query = "q=report&limit=10".to_owned();
    let mut pages = Vec::new();
    loop {
        let (hits, next) = search(&app, &alice, &query).await;
        pages.push(hits.len());
        seen.extend(hits.iter().map(|h| h.0));
        if next.is_null() {
            break;
        }
        assert_eq!(
            next.as_i64(),
            hits.last().map(|h| h.0),
            "next is the last hit"
        );
        query = format!("q=report&limit=10&before={next}");
    }
    assert_eq!(pages, [10, 10, 5]);
    sent.reverse();
    assert_eq!(seen, sent, "every match once, newest first");
}

#[tokio::test]
async fn highlights_are_escaped_html_and_odd_queries_are_words_not_syntax() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (app.user("Alice").await, app.user("Bob").await);
    let text = "<img src=x onerror=\"alert('x')\"> payload & more \u{1}not a mark\u{2}";
    app.send_to_user(&alice, &bob, text).await;
    app.send_to_user(&alice, &bob, "<b>bold</b> claim: 1<2 && 3>2")
        .await;
    app.send_to_user(&alice, &bob, "it's a\\b test").await;

    let (hits, _) = search(&app, &bob, "q=payload").await;
    assert_eq!(
        hits[0].2,
        "&lt;img src=x onerror=&quot;alert(&#39;x&#39;)&quot;&gt; <mark>payload</mark> &amp; \
         more not a mark",
        "escaped, and the text's own control characters make no marks"
    );
    // What looks like markup is text: found, and shown escaped.
    let (hits, _) = search(&app, &bob, "q=bold").await;
    assert_eq!(
        hits[0].2,
        "&lt;b&gt;<mark>bold</mark>&lt;/b&gt; claim: 1&lt;2 &amp;&amp; 3&gt;2"
    );
    assert_eq!(
        texts(&app, &bob, "claim 2").await,
        ["<b>bold</b> claim: 1<2 && 3>2"]
    );

    // tsquery operators and quotes are only text: never a 500, never a syntax error.
    for q in [
        "it's",
        "payload' & !x:*",
        "a\\b",
        "payload | more",
        "(payload",
        "payload:*B",
        "\"payload",
        "-- payload",
        "payload <-> more",
        "ok'); DROP TABLE messages; --",
    ] {
        let (status, body) = app
            .get(&format!("/chat/search?q={}", urlencode(q)), &bob)
            .await;
        assert_eq!(status, StatusCode::OK, "{q}: {body}");
    }
    assert_eq!(texts(&app, &bob, "it's").await, ["it's a\\b test"]);
}

#[tokio::test]
async fn bad_queries_are_a_422_naming_what_is_wrong() {
    let app = TestApp::spawn().await;
    let alice = app.user("Alice").await;
    let long = "x".repeat(201);
    let many = vec!["w"; 13].join("+");
    for (query, field, words) in [
        ("q=", "q", "must contain a word"),
        ("q=%20%21%21", "q", "must contain a word"),
        ("q=-lunch", "q", "must contain a word"),
        (&*format!("q={long}"), "q", "limit is 200"),
        (&*format!("q={many}"), "q", "limit is 12"),
        ("q=x&limit=0", "limit", "between 1 and 50"),
        ("q=x&limit=51", "limit", "between 1 and 50"),
        ("q=x&before=0", "before", "message id"),
        ("q=x&chat_id=abc", "chat_id", ""),
        ("q=a%00b", "q", "control characters"),
        ("q=a%09b", "q", "control characters"),
        ("limit=5", "q", ""),
    ] {
        let (status, body) = app.get(&format!("/chat/search?{query}"), &alice).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{query}: {body}");
        let detail = body["detail"].as_str().unwrap();
        assert!(detail.contains(field), "{query}: {detail}");
        assert!(detail.contains(words), "{query}: {detail}");
    }
    let (status, _) = app
        .call(reqwest::Method::GET, "/chat/search?q=x", None, None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn searches_are_rate_limited_per_user_by_default() {
    let clock = FakeRelativeClock::default();
    let limits = Limits::counting_on(LimitClock::from(clock.clone()), LimitSettings::default());
    let app = TestApp::spawn_adjusted(|state| AppState { limits, ..state }).await;
    let (alice, bob) = (app.user("Alice").await, app.user("Bob").await);
    let burst = LimitSettings::default().searches_burst;
    for _ in 0..burst {
        let (status, body) = app.get("/chat/search?q=hello", &alice).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (status, body) = app.get("/chat/search?q=hello", &alice).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["code"], "rate_limited", "{body}");
    let (status, _) = app.get("/chat/search?q=hello", &bob).await;
    assert_eq!(status, StatusCode::OK, "per user");
    clock.advance(std::time::Duration::from_secs(1));
    let (status, _) = app.get("/chat/search?q=hello", &alice).await;
    assert_eq!(status, StatusCode::OK, "the limit refills");
}

/// The two ways of [`store::search::messages`], on data small enough for a test with their
/// boundaries moved to it: a word expected in more messages than `walk_above` is walked for,
/// newest first, past at most `walk_rows` of the caller's messages a page, and a page the walk
/// left short says where it stopped in `next`; a rarer word comes from the index alone. Either
/// way the pages followed to the end hold every match once, newest first. Filler messages (by SQL, in a chat Bob is not in) make "common" common and push
/// Bob's older matches below the walk.
#[tokio::test]
async fn a_walk_stops_where_its_rows_run_out_and_the_pages_after_hold_every_match_once() {
    let app = TestApp::spawn().await;
    let (alice, bob, carol) = (
        app.user("Alice").await,
        app.user("Bob").await,
        app.user("Carol").await,
    );
    let first = id(&app
        .send_to_user(&alice, &bob, "needle one, and a common word")
        .await);
    let second = id(&app.send_to_user(&alice, &bob, "needle two").await);
    let other = app.send_to_user(&carol, &alice, "filler starts").await["chat_id"]
        .as_i64()
        .unwrap();
    let pool = &app.db.pool;
    sqlx::query(
        "WITH f AS (
             INSERT INTO messages (chat_id, seq, rev, created_rev, sender_id, text, content_hash)
             SELECT $1, 1 + s, 1 + s, 1 + s, $2, 'filler with a common word ' || s, '\\x00'
             FROM generate_series(1, 3000) s
             RETURNING seq)
         UPDATE chats SET last_seq = (SELECT max(seq) FROM f), rev = (SELECT max(seq) FROM f)
         WHERE id = $1",
    )
    .bind(other)
    .bind(carol.id)
    .execute(pool)
    .await
    .unwrap();
    let third = id(&app
        .send_to_user(&alice, &bob, "needle three, common too")
        .await);
    sqlx::query("ANALYZE messages").execute(pool).await.unwrap();
    let tuning = store::search::Tuning {
        walk_above: 1_000.0,
        walk_rows: 2,
        first_rows: 1,
    };
    let stats = store::search::word_stats(pool).await.unwrap();
    let expected = |q: &str| search::expected_matches(&stats, &search::parse(q).unwrap());
    let common = expected("common");
    assert!(common > tuning.walk_above, "walked: {common}");
    assert!(expected("needle") <= tuning.walk_above, "from the index");
    // Bob's three messages lie among some 3,000 ids, so a walk past two of his spans about
    // 2,000 ids: his older matches lie below it.
    let newest: i64 = sqlx::query_scalar("SELECT max(id) FROM messages")
        .fetch_one(pool)
        .await
        .unwrap();
    let bobs_walk = search::ids_for(tuning.walk_rows, 3.0 / newest as f64);
    assert!(
        third - second > bobs_walk,
        "Bob's older matches lie below one walk: {bobs_walk} ids"
    );

    // A page: its ids and `next`.
    let page = |user: i64, q: &'static str, before: i64, limit: i64| {
        let parsed = search::parse(q).unwrap();
        let expected = (search::expected_matches(&stats, &parsed), stats.messages);
        async move {
            let scope = store::search::Scope {
                user_id: user,
                chat_id: None,
                before,
                limit,
            };
            let page = store::search::messages(pool, &parsed, scope, expected, tuning)
                .await
                .unwrap();
            let ids: Vec<i64> = page.hits.iter().map(|h| h.message.id).collect();
            assert!(ids.len() as i64 <= limit);
            (ids, page.next)
        }
    };
    // The pages from the newest, following `next` to the end or `most` pages: the ids in
    // order and how many pages it took.
    let pages = |user: i64, q: &'static str, limit: i64, most: usize| async move {
        let (mut all, mut before, mut count) = (Vec::new(), i64::MAX, 0);
        loop {
            count += 1;
            let (ids, next) = page(user, q, before, limit).await;
            if let Some(next) = next {
                assert!(
                    next < before,
                    "{q}: the cursor moves back: {next} from {before}"
                );
                assert!(
                    ids.iter().all(|id| *id >= next),
                    "{q}: {ids:?} above {next}"
                );
            }
            all.extend(ids);
            match next {
                Some(next) if count < most => before = next,
                _ => return (all, next),
            }
        }
    };
    // The walk finds the newest and stops past two of Bob's messages, short of the page: the
    // next pages go on from where it stopped and find the older one.
    let (first_page, next) = page(bob.id, "common", i64::MAX, 5).await;
    assert_eq!(first_page, [third], "the walk's rows ran out");
    let next = next.expect("a cursor where the walk stopped");
    assert!(next > first, "stopped above the older match: {next}");
    let (bobs, end) = pages(bob.id, "common", 5, 20).await;
    assert_eq!(bobs, [third, first], "every match once, newest first");
    assert_eq!(end, None, "the last page says so");
    let (bobs, end) = pages(bob.id, "common", 1, 20).await;
    assert_eq!((bobs, end), (vec![third, first], None));
    // A rarer word: the index alone, one page.
    assert_eq!(
        page(bob.id, "needle", i64::MAX, 5).await,
        (vec![third, second, first], None)
    );
    // Alice is in both chats, nearly every message is hers: each page walks past at most two
    // of them, and ten pages hold her newest matches, each once.
    let (alices, end) = pages(alice.id, "common", 3, 10).await;
    assert!(end.is_some(), "more to come");
    assert!(alices.len() >= 10, "{alices:?}");
    let newest: Vec<i64> = (0..alices.len() as i64).map(|i| third - i).collect();
    assert_eq!(alices, newest, "the newest fillers, once each");

    // Over HTTP with the production tuning, the same answers.
    let (hits, next) = search(&app, &bob, "q=common").await;
    assert_eq!(hits.iter().map(|h| h.0).collect::<Vec<_>>(), [third, first]);
    assert!(next.is_null());
    assert!(hits[1].2.contains("<mark>common</mark>"), "{}", hits[1].2);
}

/// The server's highlights ([`search::highlight`]) against Postgres's own (`ts_headline`, what
/// the server asked before) on random chat text: words of both languages in any case, with
/// and without diacritics, apostrophes, `<`, `>` and punctuation between them, and random
/// queries of words, prefixes, phrases and exclusions. Every word the server marks, Postgres
/// marks; for queries of single words and prefixes without exclusions the two mark the same
/// words (Postgres also marks excluded words and a phrase's words wherever they stand, which
/// the server does not); and every message Postgres finds has a mark.
#[tokio::test]
async fn highlights_mark_what_ts_headline_marks() {
    let app = TestApp::spawn().await;
    const VOCABULARY: [&str; 22] = [
        "build",
        "Build",
        "BUILD",
        "deploy",
        "done",
        "see",
        "you",
        "You",
        "ёлка",
        "Ёлка",
        "елка",
        "ЁЛКИ",
        "café",
        "CAFE",
        "cafe",
        "привет",
        "Привет",
        "it's",
        "v2",
        "lunch",
        "tomorrow",
        "tom",
    ];
    const BETWEEN: [&str; 9] = [" ", ", ", ". ", "\n", "! ", " & ", " <", "> ", " — "];
    let mut seed: u64 = 0x5eed_1234_abcd_0001;
    let mut next = |n: usize| -> usize {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    let marks = |html: &str, open: &str, close: &str| -> Vec<String> {
        html.split(open)
            .skip(1)
            .filter_map(|s| s.split_once(close).map(|(w, _)| w.to_lowercase()))
            .collect()
    };
    let (mut equal, mut found) = (0, 0);
    for case in 0..600 {
        let mut text = String::new();
        for i in 0..1 + next(12) {
            if i > 0 {
                text.push_str(BETWEEN[next(BETWEEN.len())]);
            }
            text.push_str(VOCABULARY[next(VOCABULARY.len())]);
        }
        let mut q = Vec::new();
        for _ in 0..1 + next(3) {
            let word = VOCABULARY[next(VOCABULARY.len())];
            q.push(match next(6) {
                0 => format!("\"{word} {}\"", VOCABULARY[next(VOCABULARY.len())]),
                1 => format!("-{word}"),
                _ => word.to_owned(),
            });
        }
        let last = VOCABULARY[next(VOCABULARY.len())];
        q.push(last.chars().take(2 + next(3)).collect());
        let Ok(query) = search::parse(&q.join(" ")) else {
            continue;
        };
        let mut tsquery = Vec::new();
        let mut args = Vec::new();
        for term in &query.terms {
            let function = match term.kind {
                search::TermKind::Word => "plainto_tsquery",
                search::TermKind::Phrase => "phraseto_tsquery",
                search::TermKind::Prefix => "to_tsquery",
            };
            let not = if term.excluded { "!!" } else { "" };
            tsquery.push(format!(
                "{not}{function}('windi_search', ${})",
                args.len() + 2
            ));
            args.push(match term.kind {
                search::TermKind::Prefix => search::prefix_operand(&term.text),
                _ => term.text.clone(),
            });
        }
        let tsquery = tsquery.join(" && ");
        let sql = format!(
            "SELECT ts_headline('windi_search', translate($1, '<>', '  '), {tsquery},
                                'StartSel=\u{1}, StopSel=\u{2}, HighlightAll=true'),
                    to_tsvector('windi_search', translate($1, '<>', '  ')) @@ ({tsquery})"
        );
        let mut statement = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(&text);
        for arg in &args {
            statement = statement.bind(arg);
        }
        let (theirs, matches): (String, bool) = statement.fetch_one(&app.db.pool).await.unwrap();
        let ours = search::highlight(&text, &query);
        let (ours, theirs) = (
            marks(&ours, "<mark>", "</mark>"),
            marks(&theirs, "\u{1}", "\u{2}"),
        );
        let context =
            format!("case {case}: {text:?} for {query:?}: ours {ours:?}, ts_headline {theirs:?}");
        let mut left = theirs.clone();
        for word in &ours {
            let at = left.iter().position(|w| w == word);
            assert!(at.is_some(), "marked where Postgres does not: {context}");
            left.remove(at.unwrap());
        }
        let plain = query
            .terms
            .iter()
            .all(|t| !t.excluded && t.kind != search::TermKind::Phrase && !t.text.contains('\''));
        if plain {
            assert_eq!(ours, theirs, "the same marks: {context}");
            equal += 1;
        }
        if matches {
            assert!(!ours.is_empty(), "a hit without a mark: {context}");
            found += 1;
        }
    }
    assert!(
        equal > 100 && found > 30,
        "the cases reached both checks: {equal}, {found}"
    );
}
