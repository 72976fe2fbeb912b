//! Message search: the stored words of each message (`messages.search`, a `tsvector` Postgres
//! computes from the text in the write's own transaction) and their GIN index
//! `messages_search_idx` over live messages (migration `20270101000001_search`).

use sqlx::{postgres::PgArguments, query::QueryAs};

use crate::domain::{
    model::{SearchHit, SearchPage},
    search::{self, Query, TermKind, WordStats},
};

/// Where to look and how far.
#[derive(Debug, Clone, Copy)]
pub struct Scope {
    pub user_id: i64,
    /// One chat (the caller must be a member: checked here too), or every chat of the caller.
    pub chat_id: Option<i64>,
    /// Only messages with a smaller id.
    pub before: i64,
    /// The page's size (the store looks for one more, for [`SearchPage::next`]).
    pub limit: i64,
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

/// Where [`messages`] changes from the index to the walk, and how far a walk goes. A walk's
/// cost is in the caller's messages it passes (rows), whatever ids they lie among.
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    /// Above this many matches expected in the whole database, walk the newest messages; at
    /// or below it, ask the index.
    pub walk_above: f64,
    /// How far one page's walk goes back: past this many of the caller's messages, at most.
    pub walk_rows: i64,
    /// The first window of a walk passes at least this many of the caller's messages.
    pub first_rows: i64,
}

impl Default for Tuning {
    /// 5,000 matches of a million: a word in one message of two hundred, whose page of
    /// twenty lies within 4,000 of a user's messages when their chats are like the rest.
    /// 4,096 rows: a walk reads each at about 1 µs (measured on data in time order, the
    /// caller's rows scattered over the heap), so a page costs at most ~4 ms of reading
    /// whatever the words; at sixteen searches on two cores, every millisecond of one search
    /// is eight of everyone's wait. 512 rows: each window costs about 1 ms again in fixed work
    /// (a descent of each chat's index, planning, a round trip), so a narrower one saves
    /// little and risks another; a word in one message of ten fills a page in 200.
    fn default() -> Self {
        Self {
            walk_above: 5_000.0,
            walk_rows: 4_096,
            first_rows: 512,
        }
    }
}

/// How common the stored words are ([`WordStats`]): the most common words `ANALYZE` found in
/// `messages.search` with the share of messages each is in, and the table's row estimate.
/// Empty before the first `ANALYZE`.
pub async fn word_stats(db: impl sqlx::PgExecutor<'_>) -> sqlx::Result<WordStats> {
    let (words, shares, messages): (Option<Vec<String>>, Option<Vec<f32>>, f32) = sqlx::query_as(
        "SELECT (SELECT most_common_elems::text::text[] FROM pg_stats
                     WHERE schemaname = current_schema() AND tablename = 'messages'
                       AND attname = 'search'),
                    (SELECT most_common_elem_freqs FROM pg_stats
                     WHERE schemaname = current_schema() AND tablename = 'messages'
                       AND attname = 'search'),
                    (SELECT greatest(reltuples, 0) FROM pg_class
                     WHERE oid = 'messages'::regclass)",
    )
    .fetch_one(db)
    .await?;
    // `most_common_elem_freqs` ends with three more figures (least, most, nulls): zip stops
    // at the words.
    let share = words
        .unwrap_or_default()
        .into_iter()
        .zip(shares.unwrap_or_default().into_iter().map(f64::from))
        .collect();
    Ok(WordStats {
        messages: f64::from(messages),
        share,
    })
}

/// Up to `scope.limit` live messages matching `query`, newest first, in chats `scope.user_id`
/// is a member of now, each with its highlight as safe HTML. `expected` is how many messages
/// of `total` the query may match ([`search::expected_matches`]).
///
/// Which way depends on it. A common word ("ok", "завтра") matches a tenth of all messages:
/// gathering its matches from the index and sorting them reads tens of thousands of rows for
/// a page of twenty, while walking the caller's newest messages back, checking each one's
/// stored words, fills the page within a few hundred of theirs. A rare word is the opposite:
/// the index holds its few matches, and a walk would read everything. So above
/// [`Tuning::walk_above`] the walk goes, in windows of ids ([`search::next_window`]), past at
/// most [`Tuning::walk_rows`] of the caller's messages; otherwise the index answers alone. The
/// planner cannot choose between the two by itself: with `ORDER BY id DESC LIMIT` it walks
/// for any word it expects often and for every word its sample missed, which made a rare word
/// take seconds.
///
/// A walk that passes its rows before the page is full stops there: the page holds what it
/// found (maybe nothing) and `next` is where it stopped, so the client's next request goes on
/// from there (Matrix's `next_batch`, Slack's cursors). Every page costs a bounded amount
/// whatever the words: a phrase of two common words that stand together rarely (`"see you"`)
/// or a pair that seldom meet, which the statistics cannot foresee, used to fall back to the
/// index below the walk, reading and checking every message holding the rarest word — a
/// tenth of a second, and at sixteen clients on two cores, everyone's wait.
pub async fn messages(
    db: &sqlx::PgPool,
    query: &Query,
    scope: Scope,
    (expected, total): (f64, f64),
    tuning: Tuning,
) -> sqlx::Result<SearchPage> {
    // One more than asked: whether a next page exists, without a count.
    let find = Scope {
        limit: scope.limit + 1,
        ..scope
    };
    let (mut ids, stopped) = if expected > tuning.walk_above {
        walk(db, query, find, expected / total.max(1.0), tuning).await?
    } else {
        (matching(db, query, find, Walk::Index).await?, None)
    };
    let more = ids.len() as i64 > scope.limit;
    ids.truncate(scope.limit.max(0) as usize);
    let next = if more { ids.last().copied() } else { stopped };
    if ids.is_empty() {
        return Ok(SearchPage {
            hits: Vec::new(),
            next,
        });
    }
    let hits = shown(db, query, &ids).await?;
    Ok(SearchPage { hits, next })
}

/// The walk: windows of ids newest first, each read by [`Walk::Window`], sized in the caller's
/// messages by what the ones before found ([`search::next_window`]) and turned into ids by how
/// densely theirs lie among all ([`search::ids_for`]). With the matches, where it stopped short
/// of the page (the `before` to go on from) when it passed [`Tuning::walk_rows`] of the
/// caller's messages first; `None` when it filled the page or reached the oldest message.
async fn walk(
    db: &sqlx::PgPool,
    query: &Query,
    scope: Scope,
    share: f64,
    tuning: Tuning,
) -> sqlx::Result<(Vec<i64>, Option<i64>)> {
    let reach = reach(db, scope).await?;
    if reach.mine == 0 {
        return Ok((Vec::new(), None));
    }
    let density = reach.mine as f64 / reach.newest.max(1) as f64;
    let most = search::ids_for(tuning.walk_rows, density);
    let mut top = reach.top;
    let mut ids = Vec::new();
    let mut walked = 0;
    let first = search::first_window(scope.limit, share, tuning.first_rows, tuning.walk_rows);
    let mut width = search::ids_for(first, density).min(most);
    loop {
        let floor = top.saturating_sub(width).max(0);
        let want = scope.limit - ids.len() as i64;
        let window = Scope {
            before: top,
            limit: want,
            ..scope
        };
        let found = matching(db, query, window, Walk::Window { floor }).await?;
        let got = found.len() as i64;
        ids.extend(found);
        walked += top - floor;
        if got >= want || floor == 0 {
            return Ok((ids, None));
        }
        width = search::next_window(width, got, want - got).min(most - walked);
        if width <= 0 {
            return Ok((ids, Some(floor + 1)));
        }
        top = floor + 1;
    }
}

/// Where a walk starts and how densely the caller's messages lie.
#[derive(Debug, sqlx::FromRow)]
struct Reach {
    /// The newest id the walk may find, plus one: windows are `floor < id < top`.
    top: i64,
    /// The newest id of all.
    newest: i64,
    /// The messages of the chats searched (their last `seq`s: deleted ones too).
    mine: i64,
}

/// The caller's chats by the primary key (`ANY(ARRAY(…))`): joined, the planner hashed all
/// of `chats` for two hundred of them, twice the time.
async fn reach(db: &sqlx::PgPool, scope: Scope) -> sqlx::Result<Reach> {
    sqlx::query_as(
        "SELECT (SELECT coalesce(max(id), 0) + 1 FROM messages WHERE id < $1) AS top,
                (SELECT coalesce(max(id), 0) FROM messages) AS newest,
                (SELECT coalesce(sum(last_seq), 0)::bigint FROM chats
                 WHERE id = ANY(ARRAY(SELECT chat_id FROM chat_members
                                      WHERE user_id = $2 AND ($3::bigint IS NULL OR chat_id = $3))))
                 AS mine",
    )
    .bind(scope.before)
    .bind(scope.user_id)
    .bind(scope.chat_id)
    .fetch_one(db)
    .await
}

/// Which way [`matching`] goes. Each is planned for its own values (an unnamed statement): a
/// plan cached for any values walked every one of the caller's chats by its `(chat_id, seq)`
/// index intersected with the id range, 1 to 2 s a search.
#[derive(Debug, Clone, Copy)]
enum Walk {
    /// Every message of the caller's chats with an id between `floor` and `scope.before`
    /// (both exclusive), each chat's by the `(chat_id, id)` index, their stored words checked,
    /// the matches sorted. `OFFSET 0` keeps the read per chat: folded into one scan, the
    /// planner walked the primary key through everyone's messages of the window instead
    /// (five times the rows for a user whose chats carry an eighth of the traffic).
    /// `ts_match_vq` is `@@` as a plain function, which no index serves, so the planner
    /// cannot switch to the word index on a guess. `GROUP BY` tells it each chat comes once:
    /// from the members' rows it cached each chat's matches (`Memoize`) for a second visit
    /// that never came, a fifth of the window's time.
    Window { floor: i64 },
    /// Every match in the index, sorted. `m.id + 0` is not the primary key's order, so the
    /// planner cannot choose to walk it instead, on a guess that the word is common.
    Index,
}

/// The ids of up to `scope.limit` matches, newest first. Only ids: the statement stays small
/// to plan, which it is for every search.
async fn matching(
    db: &sqlx::PgPool,
    query: &Query,
    scope: Scope,
    walk: Walk,
) -> sqlx::Result<Vec<i64>> {
    let tsquery = tsquery_sql(query, 6);
    let sql = match walk {
        Walk::Window { .. } => format!(
            "SELECT w.id FROM (SELECT chat_id FROM chat_members
                               WHERE user_id = $1 AND ($2::bigint IS NULL OR chat_id = $2)
                               GROUP BY chat_id) c
             CROSS JOIN LATERAL (
                 SELECT m.id FROM messages m
                 WHERE m.chat_id = c.chat_id AND m.id > $5 AND m.id < $3
                   AND m.deleted_at IS NULL AND ts_match_vq(m.search, (SELECT {tsquery}))
                 OFFSET 0) w
             ORDER BY w.id DESC
             LIMIT $4"
        ),
        // `+ 0` on both sides of the order: no other index than the words' may serve. Left
        // the choice, the planner read every message of the caller's chats by their
        // (chat_id, seq) index for a prefix it guessed in 2% of messages (54 ms, not 0.3).
        Walk::Index => format!(
            "SELECT m.id FROM messages m
             WHERE {chat} AND m.chat_id + 0 IN (SELECT chat_id FROM chat_members
                                                WHERE user_id = $1)
               AND m.deleted_at IS NULL
               AND m.search @@ ({tsquery}) AND $5::bigint IS NULL AND m.id < $3
             ORDER BY m.id + 0 DESC
             LIMIT $4",
            chat = if scope.chat_id.is_some() {
                "m.chat_id + 0 = $2"
            } else {
                "$2::bigint IS NULL"
            },
        ),
    };
    let floor = match walk {
        Walk::Window { floor } => Some(floor),
        Walk::Index => None,
    };
    let q = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .persistent(false)
        .bind(scope.user_id)
        .bind(scope.chat_id)
        .bind(scope.before)
        .bind(scope.limit)
        .bind(floor);
    let rows: Vec<(i64,)> = bind_terms(q, query).fetch_all(db).await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// The messages `ids`, newest first, each highlighted for `query` ([`search::highlight`]).
/// One plan serves every search (a prepared statement): it looks rows up by id.
async fn shown(db: &sqlx::PgPool, query: &Query, ids: &[i64]) -> sqlx::Result<Vec<SearchHit>> {
    let sql = format!(
        "SELECT {columns}, '' AS highlight FROM messages m
         WHERE m.id = ANY($1)
         ORDER BY m.id DESC",
        columns = super::messages::message_columns!(),
    );
    let mut hits: Vec<SearchHit> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(ids)
        .fetch_all(db)
        .await?;
    for hit in &mut hits {
        hit.highlight = search::highlight(&hit.message.text, query);
    }
    Ok(hits)
}
