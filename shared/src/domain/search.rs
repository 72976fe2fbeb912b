//! What a search box's text asks for (`GET /chat/search?q=`): words, `"quoted phrases"` and
//! `-excluded` words or phrases, the last plain word matched as a prefix (search as you type).
//!
//! Pure: this module only splits and bounds the text. Folding case and diacritics, and
//! splitting a term into the words Postgres indexes, is the text search configuration's work
//! (`windi_search`, see the migration `search_config`), so a query and the index can never
//! disagree about what a word is.

use crate::domain::error::{Error, Result};

/// Longest `q`, in characters: a sentence, not a document.
pub const MAX_QUERY_CHARS: usize = 200;
/// Most terms (words and phrases, excluded or not) in one `q`: each is one more index lookup.
pub const MAX_TERMS: usize = 12;
/// The shortest last word matched as a prefix. A one-letter prefix would merge the index
/// entries of every word starting with it; a one-letter last word is matched whole.
pub const MIN_PREFIX_CHARS: usize = 2;

/// A search page when the client names no `limit`, and the most it may ask for.
pub const DEFAULT_HITS: i64 = 20;
pub const MAX_HITS: i64 = 50;

/// One part of a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    pub text: String,
    pub kind: TermKind,
    /// `-word` or `-"a phrase"`: messages containing it are left out.
    pub excluded: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TermKind {
    /// Matched whole (after folding).
    Word,
    /// The last plain word: any word starting with it.
    Prefix,
    /// Its words next to each other, in this order.
    Phrase,
}

/// A parsed, bounded query: at least one term that is not excluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub terms: Vec<Term>,
}

/// Parses `q`. Terms without a letter or digit (`!!!`, a lone `-`) are dropped, as Postgres
/// would find nothing in them; an unclosed quote runs to the end. 422 naming `q` when it is
/// too long, has too many terms, holds a control character (Postgres refuses NUL in text;
/// the rest no one types, as for `GET /users/search`), or asks for nothing but exclusions.
pub fn parse(q: &str) -> Result<Query> {
    if q.chars().any(char::is_control) {
        return Err(Error::invalid("q", "must not contain control characters"));
    }
    let chars = q.chars().count();
    if chars > MAX_QUERY_CHARS {
        return Err(Error::invalid(
            "q",
            format!("is {chars} characters long; the limit is {MAX_QUERY_CHARS}"),
        ));
    }
    let mut terms = Vec::new();
    let mut rest = q.trim_start();
    while !rest.is_empty() {
        let (excluded, after_sign) = match rest.strip_prefix('-') {
            Some(r) => (true, r),
            None => (false, rest),
        };
        let (text, kind, next) = if let Some(inner) = after_sign.strip_prefix('"') {
            let end = inner.find('"').unwrap_or(inner.len());
            let next = inner.get(end + 1..).unwrap_or("");
            (&inner[..end], TermKind::Phrase, next)
        } else {
            let end = after_sign
                .find(char::is_whitespace)
                .unwrap_or(after_sign.len());
            (&after_sign[..end], TermKind::Word, &after_sign[end..])
        };
        if text.chars().any(char::is_alphanumeric) {
            terms.push(Term {
                text: text.trim().to_owned(),
                kind,
                excluded,
            });
        }
        rest = next.trim_start();
    }
    if terms.len() > MAX_TERMS {
        return Err(Error::invalid(
            "q",
            format!(
                "has {} words or phrases; the limit is {MAX_TERMS}",
                terms.len()
            ),
        ));
    }
    if terms.iter().all(|t| t.excluded) {
        return Err(Error::invalid(
            "q",
            "must contain a word to find (letters or digits, not only -excluded ones)",
        ));
    }
    if let Some(last) = terms.last_mut()
        && last.kind == TermKind::Word
        && !last.excluded
        && last.text.chars().count() >= MIN_PREFIX_CHARS
    {
        last.kind = TermKind::Prefix;
    }
    Ok(Query { terms })
}

/// How common the indexed words are: the most common words of the stored search vectors and
/// the share of messages each is in, as `ANALYZE` sampled them (`pg_stats`), and how many
/// messages there are. What [`expected_matches`] reads.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WordStats {
    pub messages: f64,
    pub share: std::collections::HashMap<String, f64>,
}

/// A word as the search configuration would index it, near enough to look up how common it
/// is: lower case, diacritics removed (`ё` → `е`, `é` → `e`). Postgres's `unaccent` and parser
/// remain the rule for matching; a word folded differently here only makes the guess worse.
fn fold(word: &str) -> String {
    use unicode_normalization::{UnicodeNormalization, char::is_combining_mark};
    word.nfd()
        .filter(|c| !is_combining_mark(*c))
        .flat_map(char::to_lowercase)
        .collect()
}

/// How many messages `query` may match: the fewest of any term that is not excluded (all
/// must match); a phrase or a term of several words (`e-mail`) counted as the rarest of its
/// words (the rows the index hands over to be checked); a prefix as the sum of the common
/// words that start with it; a word rarer than every common one as 0.
pub fn expected_matches(stats: &WordStats, query: &Query) -> f64 {
    let share = |term: &Term| -> f64 {
        let words: Vec<String> = term
            .text
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(fold)
            .collect();
        let one = |word: &String| -> f64 {
            if term.kind == TermKind::Prefix {
                stats
                    .share
                    .iter()
                    .filter(|(known, _)| known.starts_with(word.as_str()))
                    .map(|(_, share)| share)
                    .sum()
            } else {
                stats.share.get(word).copied().unwrap_or(0.0)
            }
        };
        words.iter().map(one).fold(f64::INFINITY, f64::min)
    };
    let rarest = query
        .terms
        .iter()
        .filter(|t| !t.excluded)
        .map(share)
        .fold(f64::INFINITY, f64::min);
    if rarest.is_finite() {
        rarest.min(1.0) * stats.messages
    } else {
        0.0
    }
}

/// The caller's messages the first window of a walk passes: enough for two pages' worth of
/// matches if `share` of them matched, at least `least`, at most `most`. [`ids_for`] turns
/// them into ids.
pub fn first_window(limit: i64, share: f64, least: i64, most: i64) -> i64 {
    let wanted = if share > 0.0 {
        2.0 * limit as f64 / share
    } else {
        f64::INFINITY
    };
    (wanted.min(most as f64) as i64).max(least).min(most)
}

/// The ids a walk spans to pass `rows` of the caller's messages when `density` of all
/// messages are in the caller's chats (in the one chat searched): `rows / density`, at least
/// `rows`. The walk reads only the caller's messages, each chat's by its own index, so its cost
/// is in their rows, not in ids: a user in one chat of eight hundred messages among a million
/// passes a thousand of theirs in a million ids, a user in every chat in a thousand.
pub fn ids_for(rows: i64, density: f64) -> i64 {
    if density.is_nan() || density <= 0.0 {
        return i64::MAX;
    }
    let ids = rows as f64 / density.min(1.0);
    if ids >= i64::MAX as f64 {
        i64::MAX
    } else {
        (ids as i64).max(rows)
    }
}

/// The ids the next window spans, after one of `width` ids found `found` matches and
/// `missing` are still wanted: as wide again as the matches found so far say is needed, with
/// half as much to spare (the matches thin out unevenly), at least as wide as the last one
/// and at most eight times (none found: eight times).
pub fn next_window(width: i64, found: i64, missing: i64) -> i64 {
    let most = width.saturating_mul(8);
    if found <= 0 {
        return most;
    }
    let needed = missing as f64 * width as f64 / found as f64 * 1.5;
    (needed.min(most as f64) as i64).max(width)
}

/// `limit` of a search: 1..=[`MAX_HITS`], default [`DEFAULT_HITS`].
pub fn hits(limit: Option<i64>) -> Result<i64> {
    super::validate::limit(limit, DEFAULT_HITS, MAX_HITS)
}

/// `text` as one quoted `tsquery` operand matched as a prefix: `'it''s':*`. Inside quotes,
/// only the quote and the backslash are special to `to_tsquery`; the text is still split and
/// folded by the configuration.
pub fn prefix_operand(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 5);
    out.push('\'');
    for c in text.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push_str("':*");
    out
}

/// The most words a highlight shows: a long message is cut to this many around its first
/// match (`…` where it was cut).
pub const HIGHLIGHT_WORDS: usize = 35;
/// How many words before the first match a cut highlight keeps, so the match reads in context.
const HIGHLIGHT_CONTEXT: usize = 8;

/// A message's `text` as the highlight of a hit for `query`: HTML safe to insert (the text
/// escaped, `& < > " '`, control characters other than white space dropped), each word of a
/// match of a wanted term in `<mark>…</mark>`, nothing else; at most [`HIGHLIGHT_WORDS`]
/// words, from a little before the first match.
///
/// Written here rather than asked of Postgres (`ts_headline`): that parses the whole text again
/// in the database, ~80 µs a message, most of what showing a page of hits cost, where this
/// takes a few µs in the server. It finds matches as the index does for what people write:
/// words are runs of letters and digits, folded to lower case without diacritics ([`fold`]),
/// a term's words matched next to each other in order, the prefix term's last word as a
/// prefix. Postgres still decides which messages match; where its parser reads a token
/// differently (`unaccent` maps `ø` and `ß`, which this leaves; it does not index a bare
/// number), a word goes unmarked, never a message unfound. Proof that the two agree on chat
/// text: `search::highlights_mark_what_ts_headline_marks` in the API tests.
pub fn highlight(text: &str, query: &Query) -> String {
    let found = words(text);
    let wanted: Vec<(Vec<String>, bool)> = query
        .terms
        .iter()
        .filter(|t| !t.excluded)
        .map(|t| {
            let folded: Vec<String> = words(&t.text).into_iter().map(|w| w.folded).collect();
            (folded, t.kind == TermKind::Prefix)
        })
        .filter(|(w, _)| !w.is_empty())
        .collect();
    let mut marked = vec![false; found.len()];
    for at in 0..found.len() {
        for (term, prefix) in &wanted {
            let Some(these) = found.get(at..at + term.len()) else {
                continue;
            };
            let last = term.len() - 1;
            let hit = these.iter().zip(term).enumerate().all(|(i, (word, want))| {
                if *prefix && i == last {
                    word.folded.starts_with(want.as_str())
                } else {
                    word.folded == *want
                }
            });
            if hit {
                marked[at..at + term.len()].fill(true);
            }
        }
    }
    let (from, to) = if found.len() <= HIGHLIGHT_WORDS {
        (0, found.len())
    } else {
        let first = marked.iter().position(|m| *m).unwrap_or(0);
        let from = first
            .saturating_sub(HIGHLIGHT_CONTEXT)
            .min(found.len() - HIGHLIGHT_WORDS);
        (from, from + HIGHLIGHT_WORDS)
    };
    let start = if from == 0 { 0 } else { found[from].start };
    let end = if to == found.len() {
        text.len()
    } else {
        found[to - 1].end
    };
    let mut out = String::with_capacity(end - start + 32);
    if start > 0 {
        out.push('…');
    }
    let mut at = start;
    for (word, mark) in found[from..to].iter().zip(&marked[from..to]) {
        escape_into(&mut out, &text[at..word.start]);
        if *mark {
            out.push_str("<mark>");
            escape_into(&mut out, &text[word.start..word.end]);
            out.push_str("</mark>");
        } else {
            escape_into(&mut out, &text[word.start..word.end]);
        }
        at = word.end;
    }
    escape_into(&mut out, &text[at..end]);
    if end < text.len() {
        out.push('…');
    }
    out
}

/// One word of a text: where it lies (bytes) and how the index would store it.
struct Word {
    start: usize,
    end: usize,
    folded: String,
}

/// The words of `text`: runs of letters and digits.
fn words(text: &str) -> Vec<Word> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in text
        .char_indices()
        .chain(std::iter::once((text.len(), ' ')))
    {
        match (start, c.is_alphanumeric()) {
            (None, true) => start = Some(i),
            (Some(s), false) => {
                out.push(Word {
                    start: s,
                    end: i,
                    folded: fold(&text[s..i]),
                });
                start = None;
            }
            _ => {}
        }
    }
    out
}

/// `text` escaped for HTML, control characters other than white space left out.
fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() && !c.is_whitespace() => {}
            c => out.push(c),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn term(text: &str, kind: TermKind, excluded: bool) -> Term {
        Term {
            text: text.into(),
            kind,
            excluded,
        }
    }

    #[test]
    fn words_phrases_exclusions_and_the_last_word_as_a_prefix() {
        let q = parse(r#"  deploy "build is green" -lunch -"see you" tom"#).unwrap();
        assert_eq!(
            q.terms,
            vec![
                term("deploy", TermKind::Word, false),
                term("build is green", TermKind::Phrase, false),
                term("lunch", TermKind::Word, true),
                term("see you", TermKind::Phrase, true),
                term("tom", TermKind::Prefix, false),
            ]
        );
    }

    #[test]
    fn only_a_plain_last_word_of_two_letters_or_more_is_a_prefix() {
        let last = |q: &str| parse(q).unwrap().terms.pop().unwrap();
        assert_eq!(last("a b"), term("b", TermKind::Word, false));
        assert_eq!(last("a -bc"), term("bc", TermKind::Word, true));
        assert_eq!(last(r#"a "bc""#), term("bc", TermKind::Phrase, false));
        assert_eq!(last("привет ёж"), term("ёж", TermKind::Prefix, false));
        assert_eq!(last("e-mail"), term("e-mail", TermKind::Prefix, false));
    }

    #[test]
    fn an_unclosed_quote_runs_to_the_end_and_empty_terms_are_dropped() {
        let q = parse(r#"!!! - "" "hello wor"#).unwrap();
        assert_eq!(q.terms, vec![term("hello wor", TermKind::Phrase, false)]);
    }

    #[test]
    fn nothing_to_find_too_long_and_too_many_are_422_naming_q() {
        assert!(parse("a\0b").unwrap_err().to_string().contains("control"));
        for q in ["", "   ", "!!! ???", "-lunch", r#"-"see you" -x"#] {
            let err = parse(q).unwrap_err().to_string();
            assert!(err.contains("q: must contain a word"), "{q:?}: {err}");
        }
        let long = "x".repeat(MAX_QUERY_CHARS + 1);
        assert!(parse(&long).unwrap_err().to_string().contains("q: is 201"));
        assert!(
            parse(&"я".repeat(MAX_QUERY_CHARS)).is_ok(),
            "counted in characters"
        );
        let many = ["w"; MAX_TERMS + 1].join(" ");
        assert!(
            parse(&many)
                .unwrap_err()
                .to_string()
                .contains("limit is 12")
        );
        assert!(parse(&["w"; MAX_TERMS].join(" ")).is_ok());
    }

    #[test]
    fn a_prefix_operand_quotes_what_tsquery_would_read() {
        assert_eq!(prefix_operand("it's"), "'it''s':*");
        assert_eq!(prefix_operand(r"a\b"), r"'a\\b':*");
        assert_eq!(prefix_operand("ёж"), "'ёж':*");
    }

    #[test]
    fn highlights_escape_the_text_and_mark_only_the_matches() {
        let q = |text: &str| parse(text).unwrap();
        assert_eq!(
            highlight(
                "<img src=x onerror=\"alert('1')\"> & word \u{1}more\u{2}",
                &q("word")
            ),
            "&lt;img src=x onerror=&quot;alert(&#39;1&#39;)&quot;&gt; &amp; <mark>word</mark> more"
        );
        assert_eq!(
            highlight("<b>Bold</b> boldly", &q("bold")),
            "&lt;b&gt;<mark>Bold</mark>&lt;/b&gt; <mark>boldly</mark>",
            "the last word is a prefix"
        );
        assert_eq!(
            highlight("Ёлка и елка, ЁЛКИ", &q("ёлка x")),
            "<mark>Ёлка</mark> и <mark>елка</mark>, ЁЛКИ",
            "folded; `ёлка` is a word here, `x` the prefix"
        );
        assert_eq!(
            highlight("see you, you see, see\nyou", &q("\"see you\" -you")),
            "<mark>see</mark> <mark>you</mark>, you see, <mark>see</mark>\n<mark>you</mark>",
            "a phrase's words in order; an excluded term marks nothing"
        );
        assert_eq!(highlight("no match here", &q("zzz")), "no match here");
    }

    #[test]
    fn a_long_highlight_is_cut_around_the_first_match() {
        let text: Vec<String> = (0..100).map(|i| format!("w{i}")).collect();
        let text = text.join(" ");
        let shown = highlight(&text, &parse("w50").unwrap());
        assert!(shown.starts_with("…w42 "), "{shown}");
        assert!(shown.contains(" <mark>w50</mark> "), "{shown}");
        assert!(shown.ends_with(" w76…"), "35 words: {shown}");
        let end = highlight(&text, &parse("w99").unwrap());
        assert!(
            end.starts_with("…w65 ") && end.ends_with("<mark>w99</mark>"),
            "{end}"
        );
        let none = highlight(&text, &parse("zzz").unwrap());
        assert!(none.starts_with("w0 ") && none.ends_with(" w34…"), "{none}");
    }

    #[test]
    fn a_walk_starts_with_two_pages_of_matches_and_widens_by_what_it_found() {
        assert_eq!(
            first_window(20, 0.2, 1_000, 100_000),
            1_000,
            "at least the least"
        );
        assert_eq!(
            first_window(20, 0.001, 1_000, 100_000),
            40_000,
            "2 * 20 / 0.001"
        );
        assert_eq!(
            first_window(20, 0.0, 1_000, 100_000),
            100_000,
            "unknown share: the most"
        );
        assert_eq!(first_window(20, 1e-9, 1_000, 100_000), 100_000);
        assert_eq!(ids_for(1_000, 1.0), 1_000, "every message is theirs");
        assert_eq!(ids_for(1_000, 0.125), 8_000, "one in eight");
        assert_eq!(ids_for(1_000, 0.0008), 1_250_000, "one chat in many");
        assert_eq!(ids_for(1_000, 2.0), 1_000, "never fewer ids than rows");
        assert_eq!(ids_for(1_000, 0.0), i64::MAX, "none of theirs: everything");
        assert_eq!(ids_for(i64::MAX, 1e-6), i64::MAX, "no overflow");
        assert_eq!(
            next_window(1_000, 0, 20),
            8_000,
            "nothing found: eight times"
        );
        assert_eq!(
            next_window(1_000, 10, 10),
            1_500,
            "10 more at 10 a thousand, and half"
        );
        assert_eq!(next_window(1_000, 1, 19), 8_000, "at most eight times");
        assert_eq!(next_window(1_000, 19, 1), 1_000, "never narrower");
        assert_eq!(next_window(i64::MAX, 0, 1), i64::MAX, "no overflow");
    }

    #[test]
    fn the_expected_matches_are_the_rarest_wanted_term_and_unknown_words_are_rare() {
        let stats = WordStats {
            messages: 1000.0,
            share: [
                ("build", 0.2),
                ("tomorrow", 0.1),
                ("today", 0.05),
                ("елка", 0.01),
            ]
            .into_iter()
            .map(|(w, s)| (w.to_owned(), s))
            .collect(),
        };
        let expect = |q: &str| expected_matches(&stats, &parse(q).unwrap());
        assert_eq!(expect("build"), 200.0);
        assert_eq!(expect("BUILD tomorrow"), 100.0, "the rarest term");
        assert_eq!(
            expect("build -tomorrow"),
            200.0,
            "exclusions narrow nothing"
        );
        assert!(
            (expect("to") - 150.0).abs() < 1e-9,
            "a prefix sums its words"
        );
        assert_eq!(expect("ЁЛКА"), 10.0, "folded as the index folds");
        assert_eq!(
            expect("\"build tomorrow\""),
            100.0,
            "a phrase: its rarest word"
        );
        assert_eq!(expect("zanzibar"), 0.0, "rarer than every common word");
        assert_eq!(expect("build zanzibar"), 0.0);
    }

    #[test]
    fn hits_are_bounded() {
        assert_eq!(hits(None).unwrap(), DEFAULT_HITS);
        assert_eq!(hits(Some(MAX_HITS)).unwrap(), MAX_HITS);
        for bad in [0, -1, MAX_HITS + 1] {
            assert!(hits(Some(bad)).unwrap_err().to_string().contains("limit"));
        }
    }
}
