//! Message search: the stored words of each message (`messages.search`, a `tsvector` Postgres
//! computes from the text in the write's own transaction) and their GIN index
//! `messages_search_idx` over live messages (migration `20270101000001_search`).

use sqlx::{postgres::PgArguments, query::QueryAs};

use crate::domain::{
    model::SearchHit,
    search::{self, Query, TermKind},
};

/// Where to look and how far.
#[derive(Debug, Clone, Copy)]
pub struct Scope {
    pub user_id: i64,
    /// One chat (the caller must be a member: checked here too), or every chat of the caller.
    pub chat_id: Option<i64>,
    /// Only messages with a smaller id.
    pub before: i64,
    pub limit: i64,
}

/// How a highlight is cut: the matches with up to 35 words around them (the whole text when
/// it is shorter), between the marks of [`search::MARK_START`] and [`search::MARK_END`].
fn headline_options() -> String {
    format!(
        "StartSel={}, StopSel={}, MaxWords=35, MinWords=15, ShortWord=1",
        search::MARK_START,
        search::MARK_END
    )
}

/// The query's `tsquery`: each term through the search configuration, joined with `&&`,
/// excluded ones negated. Placeholders from `$first`; [`bind_terms`] binds them in order.
fn tsquery_sql(query: &Query, first: usize) -> String {
    let mut sql = String::new();
    for (i, term) in query.terms.iter().enumerate() {
        if i > 0 {
            sql.push_str(" && ");
        }
        if term.excluded {
            sql.push_str("!!");
        }
        let function = match term.kind {
            TermKind::Word => "plainto_tsquery",
            TermKind::Phrase => "phraseto_tsquery",
            TermKind::Prefix => "to_tsquery",
        };
        sql.push_str(&format!(
            "{function}('windi_search'::regconfig, ${})",
            first + i
        ));
    }
    sql
}

fn bind_terms<'q, O>(
    mut q: QueryAs<'q, sqlx::Postgres, O, PgArguments>,
    query: &Query,
) -> QueryAs<'q, sqlx::Postgres, O, PgArguments> {
    for term in &query.terms {
        q = q.bind(match term.kind {
            TermKind::Prefix => search::prefix_operand(&term.text),
            TermKind::Word | TermKind::Phrase => term.text.clone(),
        });
    }
    q
}

/// Where [`messages`] changes from the index to the walk, and how far a walk goes.
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    /// Above this many matches expected in the whole database, walk the newest messages; at
    /// or below it, ask the index.
    pub walk_above: f64,
    /// How far one walk goes back: this many message ids of the whole database, at most.
    pub walk_ids: i64,
}

impl Default for Tuning {
    /// 5,000 matches: a page of 20 then lies within a few thousand of a user's messages when
    /// their chats are like the rest, while the index's rows would take longer to sort.
    /// 200,000 ids: about 100 ms of walking on 2 cores if nothing matches.
    fn default() -> Self {
        Self {
            walk_above: 5_000.0,
            walk_ids: 200_000,
        }
    }
}

/// Up to `scope.limit` live messages matching `query`, newest first, in chats `scope.user_id`
/// is a member of now, each with its highlight as safe HTML.
///
/// Which way depends on how many messages the query matches, as the planner's statistics
/// expect (one `EXPLAIN` in `windi_search_estimate`, a fraction of a millisecond). A common word ("ok", "завтра")
/// matches a tenth of all messages: gathering its matches from the index and sorting them
/// reads tens of thousands of rows for a page of twenty, while walking the newest messages
/// back, checking each of the caller's stored words, fills the page within a few hundred of
/// theirs. A rare word is the opposite: the index holds its few matches, and a walk would read
/// everything. So above [`Tuning::walk_above`] expected matches the walk goes first, at most
/// [`Tuning::walk_ids`] ids back, and the index answers what it left short below where it stopped;
/// otherwise the index answers alone. The planner cannot choose between the two by itself:
/// with `ORDER BY id DESC LIMIT` it walks for any word it expects often and for every word
/// its sample missed, which made a rare word take seconds.
pub async fn messages(
    db: &sqlx::PgPool,
    query: &Query,
    scope: Scope,
) -> sqlx::Result<Vec<SearchHit>> {
    messages_tuned(db, query, scope, Tuning::default()).await
}

/// [`messages`] with other [`Tuning`] (the tests move the boundaries to small data).
pub async fn messages_tuned(
    db: &sqlx::PgPool,
    query: &Query,
    scope: Scope,
    tuning: Tuning,
) -> sqlx::Result<Vec<SearchHit>> {
    let mut hits = if expected_matches(db, query).await? > tuning.walk_above {
        let floor: i64 =
            sqlx::query_scalar("SELECT coalesce(max(id), 0) - $2 FROM messages WHERE id < $1")
                .bind(scope.before)
                .bind(tuning.walk_ids)
                .fetch_one(db)
                .await?;
        let mut hits = run(db, query, scope, Walk::Recent { floor }).await?;
        let missing = scope.limit - hits.len() as i64;
        if missing > 0 && floor > 0 {
            let below = Scope {
                before: floor + 1,
                limit: missing,
                ..scope
            };
            hits.extend(run(db, query, below, Walk::Index).await?);
        }
        hits
    } else {
        run(db, query, scope, Walk::Index).await?
    };
    for hit in &mut hits {
        hit.highlight = search::highlight_html(&hit.highlight);
    }
    Ok(hits)
}

/// How many live messages `query` may match, as the planner's statistics of the stored
/// words tell: the fewest any of its terms is expected in (all must match), a phrase counted
/// as its words together (the rows the index hands over to check their order), a prefix as
/// the most common words that start with it. Excluded terms narrow nothing the index reads.
/// (`windi_search_estimate` and `windi_search_prefix_estimate`, migration
/// `20270101000001_search`.)
pub async fn expected_matches(db: &sqlx::PgPool, query: &Query) -> sqlx::Result<f64> {
    let wanted: Vec<_> = query.terms.iter().filter(|t| !t.excluded).collect();
    let estimates: Vec<String> = wanted
        .iter()
        .enumerate()
        .map(|(i, term)| match term.kind {
            TermKind::Prefix => format!("windi_search_prefix_estimate(${})", i + 1),
            TermKind::Word | TermKind::Phrase => format!(
                "windi_search_estimate(plainto_tsquery('windi_search'::regconfig, ${}))",
                i + 1
            ),
        })
        .collect();
    let sql = format!("SELECT least({})::float8", estimates.join(", "));
    let mut q = sqlx::query_scalar(sqlx::AssertSqlSafe(sql));
    for term in &wanted {
        q = q.bind(term.text.clone());
    }
    let rows: Option<f64> = q.fetch_one(db).await?;
    Ok(rows.unwrap_or(0.0))
}

/// Which walk [`run`] takes.
#[derive(Debug, Clone, Copy)]
enum Walk {
    /// The newest messages down to `floor` (exclusive), by the primary key, each checked.
    /// The query is out of the planner's sight (a materialized CTE), so it cannot switch to
    /// the index on a guess.
    Recent { floor: i64 },
    /// Every match in the index, sorted. `m.id + 0` is not the primary key's order, so the
    /// planner cannot choose to walk it instead, on a guess that the word is common.
    Index,
}

async fn run(
    db: &sqlx::PgPool,
    query: &Query,
    scope: Scope,
    walk: Walk,
) -> sqlx::Result<Vec<SearchHit>> {
    // One chat: its own (chat_id, seq) index orders the walk; within a chat, seq and id
    // rise together (both are taken under the chat's row lock).
    let (chats, recent_order) = if scope.chat_id.is_some() {
        (
            "m.chat_id = $2 AND m.chat_id IN (SELECT chat_id FROM chat_members
                                               WHERE user_id = $1 AND chat_id = $2)",
            "m.seq DESC",
        )
    } else {
        (
            "$2::bigint IS NULL AND m.chat_id IN (SELECT chat_id FROM chat_members
                                                   WHERE user_id = $1)",
            "m.id DESC",
        )
    };
    let tsquery = tsquery_sql(query, 9);
    let (with, from, matches, order) = match walk {
        Walk::Recent { .. } => (
            format!("WITH q AS MATERIALIZED (SELECT {tsquery} AS q)"),
            "q, messages m",
            "m.search @@ q.q AND m.id > $7".to_owned(),
            recent_order,
        ),
        Walk::Index => (
            String::new(),
            "messages m",
            format!("m.search @@ ({tsquery}) AND $7::bigint IS NULL"),
            "m.id + 0 DESC",
        ),
    };
    let sql = format!(
        "{with}
         SELECT {columns}, ts_headline('windi_search'::regconfig,
                    translate(m.text, $5, $8), {tsquery}, $6) AS highlight
         FROM (SELECT m.id FROM {from}
               WHERE {chats}
                 AND m.deleted_at IS NULL
                 AND {matches}
                 AND m.id < $3
               ORDER BY {order}
               LIMIT $4) hit
         JOIN messages m ON m.id = hit.id
         ORDER BY m.id DESC",
        columns = super::messages::message_columns!(),
    );
    let floor = match walk {
        Walk::Recent { floor } => Some(floor),
        Walk::Index => None,
    };
    let (from, to) = search::headline_translation();
    let q = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(scope.user_id)
        .bind(scope.chat_id)
        .bind(scope.before)
        .bind(scope.limit)
        .bind(from)
        .bind(headline_options())
        .bind(floor)
        .bind(to);
    bind_terms(q, query).fetch_all(db).await
}
