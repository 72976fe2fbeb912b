//! Input rules, each returning a 422 that names the field. Postgres refuses NUL in `text`
//! columns, so every string that reaches the database passes through here first.

use crate::domain::{
    error::{Error, Result},
    model::{
        DEFAULT_MIN_PASSWORD_CHARS, DEFAULT_PAGE, MAX_DEDUP_KEY_CHARS, MAX_EMAIL_CHARS,
        MAX_EMOJI_BYTES, MAX_MENTIONS, MAX_NAME_CHARS, MAX_PAGE, MAX_PASSWORD_BYTES,
        MAX_TEXT_CHARS, MIN_PASSWORD_CHARS_FLOOR,
    },
    presence,
};

/// Message text: kept exactly as sent (whitespace is content), but not blank, not over
/// [`MAX_TEXT_CHARS`], and without NUL.
pub(crate) fn message_text(text: &str) -> Result<()> {
    if text.trim().is_empty() {
        return Err(Error::invalid("text", "must not be empty"));
    }
    let chars = text.chars().count();
    if chars > MAX_TEXT_CHARS {
        return Err(Error::invalid(
            "text",
            format!("is {chars} characters long; the limit is {MAX_TEXT_CHARS}"),
        ));
    }
    no_nul("text", text)
}

/// Characters that change how the text around them is laid out, or split it, without showing
/// themselves: bidirectional embeddings, overrides and isolates (U+202A–U+202E,
/// U+2066–U+2069), and the zero-width space, word joiner and BOM (U+200B, U+2060, U+FEFF). In a
/// name shown next to other text, U+202E makes "Bob\u{202E}gpj.exe" read as "Bobexe.jpg", and
/// a zero-width space makes two names that look alike differ. The joiners U+200C and U+200D
/// stay allowed: Persian and Indic names and emoji sequences need them.
pub(crate) fn is_invisible_format(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200B}' | '\u{2060}' | '\u{FEFF}')
}

/// A display name (user or group): trimmed, 1..=[`MAX_NAME_CHARS`], no control characters and
/// no invisible layout characters (see [`is_invisible_format`]).
pub fn name(field: &str, raw: &str) -> Result<String> {
    let name = raw.trim();
    if name.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(Error::invalid(
            field,
            format!("must be at most {MAX_NAME_CHARS} characters"),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(Error::invalid(field, "must not contain control characters"));
    }
    if let Some(c) = name.chars().find(|&c| is_invisible_format(c)) {
        return Err(Error::invalid(
            field,
            format!(
                "must not contain invisible layout characters (U+{:04X})",
                u32::from(c)
            ),
        ));
    }
    Ok(name.to_owned())
}

/// An email address: trimmed, one `@` with text on both sides and a dot in the domain. The
/// real check is the confirmation mail a production deployment would send; this catches typos.
pub fn email(raw: &str) -> Result<String> {
    let email = raw.trim();
    let bad = || Error::invalid("email", "is not a valid email address");
    if email.chars().count() > MAX_EMAIL_CHARS {
        return Err(Error::invalid(
            "email",
            format!("must be at most {MAX_EMAIL_CHARS} characters"),
        ));
    }
    if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad());
    }
    let (local, domain) = email.split_once('@').ok_or_else(bad)?;
    if local.is_empty()
        || domain.contains('@')
        || !domain.contains('.')
        || domain.starts_with('.')
        || domain.ends_with('.')
    {
        return Err(bad());
    }
    Ok(email.to_owned())
}

/// What a new password must satisfy. The minimum length is policy, so an operator chooses it
/// (`PASSWORD_MIN_LENGTH`, read in [`crate::config`], which builds one); a value of this type
/// always lies between [`MIN_PASSWORD_CHARS_FLOOR`] and [`MAX_PASSWORD_BYTES`], so it can neither
/// switch the check off nor refuse every password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordRules {
    min_chars: usize,
}

impl Default for PasswordRules {
    fn default() -> Self {
        Self {
            min_chars: DEFAULT_MIN_PASSWORD_CHARS,
        }
    }
}

impl PasswordRules {
    /// Rules asking for at least `min_chars` characters; `None` outside the bounds above.
    pub fn with_min_chars(min_chars: usize) -> Option<Self> {
        (MIN_PASSWORD_CHARS_FLOOR..=MAX_PASSWORD_BYTES)
            .contains(&min_chars)
            .then_some(Self { min_chars })
    }

    pub fn min_chars(self) -> usize {
        self.min_chars
    }

    /// Checks a password being set; the 422 names `field`, the name the client sent it under.
    pub fn check(self, field: &str, password: &str) -> Result<()> {
        if password.chars().count() < self.min_chars {
            return Err(Error::invalid(
                field,
                format!("must be at least {} characters", self.min_chars),
            ));
        }
        if password.len() > MAX_PASSWORD_BYTES {
            return Err(Error::invalid(
                field,
                format!("must be at most {MAX_PASSWORD_BYTES} bytes"),
            ));
        }
        Ok(())
    }
}

/// An idempotency key: 1..=[`MAX_DEDUP_KEY_CHARS`] printable characters.
pub fn dedup_key(key: &str) -> Result<()> {
    if key.is_empty() || key.chars().count() > MAX_DEDUP_KEY_CHARS {
        return Err(Error::invalid(
            "dedup_key",
            format!("must be 1 to {MAX_DEDUP_KEY_CHARS} characters"),
        ));
    }
    if key.chars().any(char::is_control) {
        return Err(Error::invalid(
            "dedup_key",
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// User ids a client lists in `field`: each at least 1, each once (a repeat is dropped, the
/// order of first mention kept), at most `max`; a 422 naming `field` otherwise. Read one by
/// one (a list read from text passes its parse errors through), so a long list is refused at
/// its `max + 1`th distinct id, not held whole.
pub fn user_ids(
    field: &str,
    ids: impl IntoIterator<Item = Result<i64>>,
    max: usize,
) -> Result<Vec<i64>> {
    let mut out: Vec<i64> = Vec::new();
    for id in ids {
        let id = id?;
        if id < 1 {
            return Err(Error::invalid(field, format!("{id} is not a user id")));
        }
        if !out.contains(&id) {
            out.push(id);
        }
        if out.len() > max {
            return Err(Error::invalid(
                field,
                format!("names more than {max} users"),
            ));
        }
    }
    Ok(out)
}

/// The members a message mentions ([`user_ids`], at most [`MAX_MENTIONS`]). Whether they are
/// members is the send's to check, under the chat's lock.
pub fn mentions(ids: &[i64]) -> Result<Vec<i64>> {
    user_ids("mentions", ids.iter().copied().map(Ok), MAX_MENTIONS)
}

/// The user ids of `GET /users/presence?ids=1,2`: comma-separated, each once (repeats
/// dropped), at least one, at most [`presence::MAX_IDS`]. A 422 naming `ids` otherwise.
pub fn presence_ids(raw: &str) -> Result<Vec<i64>> {
    let parsed = raw
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|part| {
            part.parse()
                .ok()
                .filter(|id: &i64| *id > 0)
                .ok_or_else(|| Error::invalid("ids", format!("{part:?} is not a user id")))
        });
    let ids = user_ids("ids", parsed, presence::MAX_IDS)?;
    if ids.is_empty() {
        return Err(Error::invalid("ids", "must name at least one user id"));
    }
    Ok(ids)
}

/// A page size `limit`: 1..=`max`, `default` when the client names none.
pub fn limit(limit: Option<i64>, default: i64, max: i64) -> Result<i64> {
    let limit = limit.unwrap_or(default);
    if !(1..=max).contains(&limit) {
        return Err(Error::invalid(
            "limit",
            format!("must be between 1 and {max}, got {limit}"),
        ));
    }
    Ok(limit)
}

/// `limit` (1..=[`MAX_PAGE`], default [`DEFAULT_PAGE`]) and `offset` (≥ 0, default 0).
pub fn page(limit: Option<i64>, offset: Option<i64>) -> Result<(i64, i64)> {
    let limit = self::limit(limit, DEFAULT_PAGE, MAX_PAGE)?;
    let offset = offset.unwrap_or(0);
    if offset < 0 {
        return Err(Error::invalid("offset", "must not be negative"));
    }
    Ok((limit, offset))
}

/// A reaction: 1..=[`MAX_EMOJI_BYTES`] bytes of UTF-8 without whitespace or control
/// characters. Which strings are emoji is Unicode's business and changes every year; windi only
/// keeps reactions short and printable, as Slack and Matrix do.
pub fn emoji(emoji: &str) -> Result<()> {
    if emoji.is_empty() || emoji.len() > MAX_EMOJI_BYTES {
        return Err(Error::invalid(
            "emoji",
            format!("must be 1 to {MAX_EMOJI_BYTES} bytes of UTF-8"),
        ));
    }
    if emoji.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Error::invalid(
            "emoji",
            "must not contain whitespace or control characters",
        ));
    }
    Ok(())
}

fn no_nul(field: &str, value: &str) -> Result<()> {
    if value.contains('\0') {
        return Err(Error::invalid(field, "must not contain NUL characters"));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn presence_ids_are_user_ids_each_once_and_bounded() {
        assert_eq!(presence_ids("3, 1,3,,2").unwrap(), [3, 1, 2]);
        for (raw, words) in [
            ("", "at least one"),
            (",", "at least one"),
            ("1,x", "\"x\" is not a user id"),
            ("0", "\"0\" is not a user id"),
            ("-4", "is not a user id"),
        ] {
            let err = presence_ids(raw).unwrap_err().to_string();
            assert!(err.contains("ids") && err.contains(words), "{raw:?}: {err}");
        }
        let many: Vec<String> = (1..=presence::MAX_IDS as i64 + 1)
            .map(|i| i.to_string())
            .collect();
        assert!(
            presence_ids(&many.join(","))
                .unwrap_err()
                .to_string()
                .contains("more than 200")
        );
        assert_eq!(
            presence_ids(&many[..presence::MAX_IDS].join(","))
                .unwrap()
                .len(),
            presence::MAX_IDS
        );
    }

    #[test]
    fn mentions_are_user_ids_each_once_and_at_most_fifty() {
        assert_eq!(mentions(&[3, 1, 3, 2, 1]).unwrap(), [3, 1, 2]);
        assert!(mentions(&[]).unwrap().is_empty());
        let err = mentions(&[1, 0]).unwrap_err().to_string();
        assert!(err.contains("mentions: 0 is not a user id"), "{err}");
        let fifty: Vec<i64> = (1..=50).collect();
        assert_eq!(mentions(&fifty).unwrap(), fifty);
        let repeated: Vec<i64> = fifty.iter().chain(&fifty).copied().collect();
        assert_eq!(
            mentions(&repeated).unwrap(),
            fifty,
            "repeats are not counted"
        );
        let err = mentions(&(1..=51).collect::<Vec<_>>())
            .unwrap_err()
            .to_string();
        assert!(err.contains("more than 50"), "{err}");
    }

    #[test]
    fn names_refuse_bidi_overrides_and_zero_width_spaces_but_keep_joiners() {
        for bad in [
            "Bob\u{202E}gpj.exe",
            "\u{2067}Eve",
            "Ali\u{200B}ce",
            "\u{FEFF}Zed",
        ] {
            let e = name("name", bad).expect_err(bad).to_string();
            assert!(
                e.starts_with("name: must not contain invisible"),
                "{bad:?}: {e}"
            );
        }
        for good in ["می\u{200C}خواهم", "👨\u{200D}👩\u{200D}👧 family", "Ёлка"] {
            assert!(name("name", good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn text_limits_are_counted_in_characters_not_bytes() {
        assert!(message_text(&"я".repeat(MAX_TEXT_CHARS)).is_ok());
        assert!(message_text(&"я".repeat(MAX_TEXT_CHARS + 1)).is_err());
    }

    #[test]
    fn blank_and_nul_text_are_refused() {
        assert!(message_text("  \n").is_err());
        assert!(message_text("a\0b").is_err());
    }

    #[test]
    fn emails_need_a_local_part_and_a_dotted_domain() {
        assert_eq!(email("  a@b.co ").ok().as_deref(), Some("a@b.co"));
        for bad in ["", "a", "@b.co", "a@b", "a@@b.co", "a b@c.de", "a@.co"] {
            assert!(email(bad).is_err(), "{bad:?} passed");
        }
    }

    #[test]
    fn the_password_minimum_is_the_chosen_one_and_the_error_names_it() {
        let six = PasswordRules::with_min_chars(6).unwrap_or_default();
        assert_eq!(six.min_chars(), 6);
        assert!(six.check("password", "secret").is_ok());
        let short = six.check("password", "five5").err().map(|e| e.to_string());
        assert_eq!(
            short.as_deref(),
            Some("password: must be at least 6 characters")
        );
        let refused = PasswordRules::default()
            .check("new_password", "secret")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert_eq!(refused, "new_password: must be at least 8 characters");
        assert!(
            six.check("password", &"x".repeat(MAX_PASSWORD_BYTES + 1))
                .is_err()
        );
    }

    #[test]
    fn the_password_minimum_stays_between_the_floor_and_the_longest_password() {
        assert_eq!(
            PasswordRules::with_min_chars(MIN_PASSWORD_CHARS_FLOOR - 1),
            None
        );
        assert_eq!(PasswordRules::with_min_chars(MAX_PASSWORD_BYTES + 1), None);
        assert!(PasswordRules::with_min_chars(MAX_PASSWORD_BYTES).is_some());
    }

    #[test]
    fn reactions_are_short_and_printable() {
        for good in ["👍", "❤️", "👨‍👩‍👧‍👦", "🇺🇦", "+1", ":party:"] {
            assert!(emoji(good).is_ok(), "{good:?} refused");
        }
        for bad in [
            "",
            " ",
            "👍 👍",
            "a\tb",
            "a\u{7}",
            &"x".repeat(MAX_EMOJI_BYTES + 1),
        ] {
            assert!(emoji(bad).is_err(), "{bad:?} passed");
        }
    }

    #[test]
    fn page_bounds_are_explicit() {
        assert_eq!(page(None, None).ok(), Some((DEFAULT_PAGE, 0)));
        assert!(page(Some(0), None).is_err());
        assert!(page(Some(MAX_PAGE + 1), None).is_err());
        assert!(page(Some(5), Some(-1)).is_err());
    }
}

#[cfg(test)]
mod properties {
    //! The input rules against any string: they never panic, and what they accept is exactly
    //! what the rule says (checked against a plain restatement of it).

    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn message_text_accepts_exactly_the_rule(text in "\\PC{0,8}|[ \\t\\n\\x00a-z]{0,8}|.{4090,4100}") {
            let expected = !text.trim().is_empty()
                && text.chars().count() <= MAX_TEXT_CHARS
                && !text.contains('\0');
            prop_assert_eq!(message_text(&text).is_ok(), expected);
        }

        #[test]
        fn emoji_accepts_exactly_the_rule(emoji in "\\PC{0,12}|[ \\t\\x07👍❤️]{0,6}") {
            let expected = !emoji.is_empty()
                && emoji.len() <= MAX_EMOJI_BYTES
                && !emoji.chars().any(|c| c.is_whitespace() || c.is_control());
            prop_assert_eq!(self::emoji(&emoji).is_ok(), expected);
        }

        #[test]
        fn names_are_trimmed_bounded_and_printable(raw in "\\PC{0,120}|[ \\t\\x01x]{0,5}") {
            match name("name", &raw) {
                Ok(name) => {
                    prop_assert_eq!(name.as_str(), raw.trim());
                    prop_assert!(!name.is_empty() && name.chars().count() <= MAX_NAME_CHARS);
                    prop_assert!(!name.chars().any(char::is_control));
                    prop_assert!(!name.chars().any(is_invisible_format));
                }
                Err(e) => prop_assert!(e.to_string().starts_with("name:"), "{}", e),
            }
        }

        #[test]
        fn emails_that_pass_have_one_at_and_a_dotted_domain(raw in "\\PC{0,40}|[a-z@.]{0,12}") {
            if let Ok(email) = email(&raw) {
                let (local, domain) = email.split_once('@').unwrap_or_default();
                prop_assert!(!local.is_empty() && domain.contains('.') && !domain.contains('@'));
                prop_assert!(!email.chars().any(char::is_whitespace));
            }
        }

        #[test]
        fn pages_are_within_bounds_or_refused(limit in proptest::option::of(-5i64..300), offset in proptest::option::of(-5i64..10)) {
            match page(limit, offset) {
                Ok((l, o)) => prop_assert!((1..=MAX_PAGE).contains(&l) && o >= 0),
                Err(e) => prop_assert!(e.to_string().starts_with("limit") || e.to_string().starts_with("offset")),
            }
        }
    }
}
