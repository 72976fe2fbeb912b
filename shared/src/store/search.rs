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

/// How far back [`recent`] walks: the newest this many message ids of the whole database.
/// Within it, checking each of the caller's messages against its stored words is cheaper
/// than gathering every match from the index; beyond it, the index is.
pub const RECENT_WINDOW: i64 = 20_000;

/// Up to `scope.limit` live messages matching `query`, newest first, in chats `scope.user_id`
/// is a member of now, each with its highlight as safe HTML.
///
/// Two walks, because no one plan serves both kinds of word. A common word ("ok", "завтра")
/// matches a tenth of all messages: gathering its matches from the index and sorting them
/// reads thousands of rows for a page of twenty, while the newest messages hold a page of
/// them. A rare word or a phrase that rarely occurs is the opposite. So [`recent`] first
/// checks the caller's messages among the newest [`RECENT_WINDOW`], and only if that leaves
/// the page short does [`older`] ask the index for the rest, below the window. The planner
/// cannot make this choice itself: its estimate of how often a word occurs comes from a
/// sample, and misses every word not in it.
pub async fn messages(
    db: &sqlx::PgPool,
    query: &Query,
    scope: Scope,
) -> sqlx::Result<Vec<SearchHit>> {
    let floor: i64 =
        sqlx::query_scalar("SELECT coalesce(max(id), 0) - $2 FROM messages WHERE id < $1")
            .bind(scope.before)
            .bind(RECENT_WINDOW)
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
        hits.extend(run(db, query, below, Walk::Older).await?);
    }
    for hit in &mut hits {
        hit.highlight = search::highlight_html(&hit.highlight);
    }
    Ok(hits)
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
    Older,
}

async fn run(
    db: &sqlx::PgPool,
    query: &Query,
    scope: Scope,
    walk: Walk,
) -> sqlx::Result<Vec<SearchHit>> {
    let chats = if scope.chat_id.is_some() {
        "SELECT chat_id FROM chat_members WHERE user_id = $1 AND chat_id = $2"
    } else {
        "SELECT chat_id FROM chat_members WHERE user_id = $1 AND $2::bigint IS NULL"
    };
    let tsquery = tsquery_sql(query, 9);
    let (with, from, matches, order) = match walk {
        Walk::Recent { .. } => (
            format!("WITH q AS MATERIALIZED (SELECT {tsquery} AS q)"),
            "q, messages m",
            "m.search @@ q.q AND m.id > $7".to_owned(),
            "m.id DESC",
        ),
        Walk::Older => (
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
               WHERE m.chat_id IN ({chats})
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
        Walk::Older => None,
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
