//! Table-driven tests of matchers, targets, meta rules, validation and pack tests.

use crate::{Action, CompileOptions, Error, Field, Step, Targets, compile_str};

fn pack(rules: &str) -> String {
    format!(
        "[pack]\nname = \"t\"\nversion = \"1\"\n[thresholds]\ntag = 1.0\nquarantine = 5.0\nreject = 10.0\n{rules}"
    )
}

fn hits(rules: &str, t: &Targets<'_>) -> Vec<(String, Option<String>)> {
    let compiled =
        compile_str(&pack(rules), &CompileOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    let r = compiled.scan(t);
    r.packs[0]
        .hits
        .iter()
        .map(|h| (h.rule.clone(), h.matched.clone()))
        .collect()
}

/// What runs over `field` in `compiled` (the test's pack must have a rule there).
fn matcher(compiled: &crate::CompiledRules, field: Field) -> &crate::compile::TargetMatcher {
    compiled
        .matcher(&crate::Target::Field(field))
        .unwrap_or_else(|| panic!("no rule on {field:?}"))
}

fn one(field: Field, value: &str) -> Targets<'static> {
    let mut t = Targets::new();
    t.push_str(field, value.to_string());
    t
}

#[test]
fn matchers_table() {
    // (rule body, field, value, expected matched text or None for no hit)
    let cases: &[(&str, Field, &str, Option<&str>)] = &[
        // literals: ASCII case-insensitive by default
        (
            r#"literals = ["viagra"]"#,
            Field::Body,
            "buy VIAGRA now",
            Some("VIAGRA"),
        ),
        (
            r#"literals = ["viagra"]"#,
            Field::Body,
            "buy v1agra now",
            None,
        ),
        (r#"literals = ["gra"]"#, Field::Body, "viagra", Some("gra")),
        (
            r#"literals = ["Viagra"]
case_sensitive = true"#,
            Field::Body,
            "VIAGRA viagra",
            None,
        ),
        (
            r#"literals = ["Viagra"]
case_sensitive = true"#,
            Field::Body,
            "viagra Viagra",
            Some("Viagra"),
        ),
        // words: boundaries on both sides
        (r#"words = ["free"]"#, Field::Body, "freedom", None),
        (r#"words = ["free"]"#, Field::Body, "carefree", None),
        (
            r#"words = ["free"]"#,
            Field::Body,
            "it's FREE!",
            Some("FREE"),
        ),
        (r#"words = ["free"]"#, Field::Body, "free", Some("free")),
        (r#"words = ["free"]"#, Field::Body, "free_offer", None),
        (r#"words = ["prix"]"#, Field::Body, "prixé", None),
        // literal and word in one rule
        (
            r#"literals = ["zzz"]
words = ["win"]"#,
            Field::Body,
            "we win",
            Some("win"),
        ),
        // regexes with a factor
        (
            r#"regex = '\$\d+ million'"#,
            Field::Body,
            "wire $25 million",
            Some("$25 million"),
        ),
        (
            r#"regex = '\$\d+ million'"#,
            Field::Body,
            "wire $ million",
            None,
        ),
        (
            r#"regex = 'urgent\s+reply'"#,
            Field::Body,
            "URGENT  Reply",
            Some("URGENT  Reply"),
        ),
        (
            r#"regex = 'urgent\s+reply'
case_sensitive = true"#,
            Field::Body,
            "URGENT  Reply",
            None,
        ),
        // regexes without a factor (regex set)
        (
            r#"regex = '^\d{5,}$'"#,
            Field::Helo,
            "123456",
            Some("123456"),
        ),
        (
            r#"regex = '^\d{5,}$'"#,
            Field::Helo,
            "mail1234567.example",
            None,
        ),
        (
            r#"regex = '[A-Z]{3}\d'"#,
            Field::Subject,
            "ref ABC7",
            Some("ABC7"),
        ),
        // bytes: invalid UTF-8 is scanned, not refused
        (
            r#"regex = '(?-u)\xff\xfe'"#,
            Field::RawBody,
            "a\u{0}b",
            None,
        ),
        // anchors apply per value
        (
            r#"regex = '^bad\.example$'"#,
            Field::UrlHost,
            "bad.example",
            Some("bad.example"),
        ),
        (
            r#"regex = '^bad\.example$'"#,
            Field::UrlHost,
            "notbad.example",
            None,
        ),
    ];
    for (i, (body, field, value, want)) in cases.iter().enumerate() {
        let rules = format!(
            "[[rule]]\nid = \"R\"\ntarget = \"{}\"\nscore = 1.0\n{body}\n",
            field.as_str()
        );
        let got = hits(&rules, &one(*field, value));
        let got = got.first().and_then(|(_, m)| m.as_deref());
        assert_eq!(got, *want, "case {i}: {body} on {value:?}");
    }
}

#[test]
fn invalid_utf8_values_are_scanned() {
    let mut t = Targets::new();
    t.push(Field::RawBody, b"\xff\xfeFREE\xff".to_vec());
    let got = hits(
        "[[rule]]\nid = \"R\"\ntarget = \"raw-body\"\nwords = [\"free\"]\n[[rule]]\nid = \"S\"\ntarget = \"raw-body\"\nregex = '(?-u)\\xfe[A-Z]+\\xff'\n",
        &t,
    );
    let ids: Vec<&str> = got.iter().map(|(id, _)| id.as_str()).collect();
    // Bytes >= 0x80 count as word bytes, so FREE between 0xfe and 0xff is not a word.
    assert_eq!(ids, ["S"]);
}

#[test]
fn every_target_reaches_its_rules() {
    use crate::Target;
    let mut t = Targets::new();
    t.push_header("Subject", "s-value");
    t.push_header("X-Mailer", "mailer-value");
    for f in Field::ALL {
        t.push_str(f, format!("{}-value", f.as_str()));
    }
    let mut targets: Vec<Target> = Field::ALL.iter().map(|f| Target::Field(*f)).collect();
    targets.push(Target::AllHeaders);
    targets.push(Target::Header("x-mailer".into()));
    for target in targets {
        let want = match &target {
            Target::AllHeaders => "X-Mailer: mailer-value".to_string(),
            Target::Header(_) => "mailer-value".to_string(),
            Target::Field(f) => format!("{}-value", f.as_str()),
        };
        let rules = format!(
            "[[rule]]\nid = \"R\"\ntarget = \"{target}\"\nregex = '^{}$'\n[[rule]]\nid = \"L\"\ntarget = \"{target}\"\nliterals = [\"{}\"]\n",
            regex::escape(&want),
            want
        );
        let got = hits(&rules, &t);
        assert_eq!(
            got,
            [
                ("R".to_string(), Some(want.clone())),
                ("L".to_string(), Some(want.clone()))
            ],
            "{target}"
        );
        // And no other target feeds it.
        let other = one(Field::Body, "unrelated");
        if target != Target::Field(Field::Body) {
            assert!(hits(&rules, &other).is_empty(), "{target}");
        }
    }
}

#[test]
fn several_targets_per_rule() {
    let rules =
        "[[rule]]\nid = \"R\"\ntarget = [\"subject\", \"from-name\"]\nwords = [\"lottery\"]\n";
    assert_eq!(
        hits(rules, &one(Field::FromName, "Lottery Office")).len(),
        1
    );
    assert_eq!(
        hits(rules, &one(Field::Subject, "your lottery win")).len(),
        1
    );
    assert!(hits(rules, &one(Field::Body, "lottery")).is_empty());
}

#[test]
fn meta_rules_table() {
    let base = r#"
[[rule]]
id = "A"
target = "body"
words = ["alpha"]
[[rule]]
id = "B"
target = "body"
words = ["beta"]
[[rule]]
id = "C"
target = "subject"
literals = ["!"]
"#;
    let cases: &[(&str, &str, &str, bool)] = &[
        ("A && B", "alpha beta", "", true),
        ("A && B", "alpha", "", false),
        ("A || B", "beta", "", true),
        ("A && !B", "alpha", "", true),
        ("A && !B", "alpha beta", "", false),
        ("(A || B) && C", "beta", "hi!", true),
        ("(A || B) && C", "beta", "hi", false),
        ("count(A, B, C) >= 2", "alpha", "!", true),
        ("count(A, B, C) >= 2", "alpha", "", false),
        ("hits(C) >= 3", "", "!!!", true),
        ("hits(C) >= 3", "", "!!", false),
        ("sum(A, C) == 3", "alpha", "!!", true),
        ("A + B + C > 2", "alpha beta", "!", true),
        ("M2", "alpha beta", "", true),
        ("!M2", "alpha", "", true),
        // True on a message nothing matched (the baseline), false once a reference hits.
        ("!A", "", "", true),
        ("!A", "alpha", "", false),
        ("!M2 && !C", "", "", true),
        ("!M2 && !C", "alpha beta", "", false),
        ("count(A, B) == 0", "", "", true),
        ("count(A, B) == 0", "beta", "", false),
    ];
    for (expr, body, subject, want) in cases {
        let rules = format!(
            "{base}[[rule]]\nid = \"M\"\nmeta = \"{expr}\"\nscore = 2.0\n[[rule]]\nid = \"M2\"\nmeta = \"A && B\"\n"
        );
        let mut t = Targets::new();
        t.push_str(Field::Body, body.to_string());
        t.push_str(Field::Subject, subject.to_string());
        let got = hits(&rules, &t).iter().any(|(id, _)| id == "M");
        assert_eq!(got, *want, "{expr} body={body:?} subject={subject:?}");
    }
}

#[test]
fn scores_and_thresholds() {
    let rules = r#"
[[rule]]
id = "A"
target = "body"
words = ["a1"]
score = 1.5
[[rule]]
id = "B"
target = "body"
words = ["b1"]
score = 4.0
[[rule]]
id = "C"
target = "body"
words = ["c1"]
score = 6.0
[[rule]]
id = "NEG"
target = "body"
words = ["ok"]
score = -2.0
"#;
    let compiled = compile_str(&pack(rules), &CompileOptions::default()).unwrap();
    let cases: &[(&str, f64, Action)] = &[
        ("", 0.0, Action::Continue),
        ("a1", 1.5, Action::Tag),
        ("a1 b1", 5.5, Action::Quarantine),
        ("b1 c1", 10.0, Action::Reject),
        ("a1 b1 c1 ok", 9.5, Action::Quarantine),
        ("a1 a1 a1", 1.5, Action::Tag),
        ("ok", -2.0, Action::Continue),
    ];
    for (body, score, action) in cases {
        let r = compiled.scan(&one(Field::Body, body));
        assert_eq!(r.packs[0].score, *score, "{body}");
        assert_eq!(r.packs[0].action, *action, "{body}");
        assert_eq!(r.action(), *action, "{body}");
    }
}

fn refusal(src: &str) -> (Step, Vec<String>) {
    match compile_str(src, &CompileOptions::default()) {
        Err(Error::Refused { step, problems }) => {
            (step, problems.iter().map(|p| p.to_string()).collect())
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("accepted:\n{src}"),
    }
}

#[test]
fn validation_collects_every_problem_with_line_and_rule() {
    let src = pack(
        r#"
[[rule]]
id = "NO_TARGET"
literals = ["x"]

[[rule]]
id = "BAD_TARGET"
target = "bodies"
literals = ["x"]

[[rule]]
id = "TWO_KINDS"
target = "body"
literals = ["x"]
regex = "x"

[[rule]]
id = "NO_KIND"
target = "body"

[[rule]]
id = "BAD_META"
meta = "NO_TARGET && MISSING"

[[rule]]
id = "NO_TARGET"
target = "body"
literals = ["y"]

[[rule]]
id = "9bad"
target = "body"
literals = [""]

[[rule]]
id = "CYCLE_A"
meta = "CYCLE_B"

[[rule]]
id = "CYCLE_B"
meta = "CYCLE_A || NO_KIND"

[[rule]]
id = "ZERO_HITS"
target = "body"
literals = ["z"]
max_hits = 0

[[rule]]
id = "META_HITS"
meta = "ZERO_HITS"
max_hits = 2

[[test]]
name = "refers to nothing"
snippet = { body = "x" }
must_hit = ["NOPE"]
verdict = "bounce"
"#,
    );
    let (step, problems) = refusal(&src);
    assert_eq!(step, Step::Validate);
    let want = [
        "<inline>:10: rule NO_TARGET: missing target",
        "<inline>:14: rule BAD_TARGET: unknown target \"bodies\"",
        "<inline>:19: rule TWO_KINDS: more than one matcher kind",
        "<inline>:25: rule NO_KIND: no matcher",
        "<inline>:33: rule NO_TARGET: duplicate rule id",
        "<inline>:38: rule 9bad: invalid rule id",
        "<inline>:38: rule 9bad: empty literal",
        "meta refers to unknown rule MISSING",
        "meta rules form a cycle",
        "rule ZERO_HITS: max_hits must be at least 1",
        "rule META_HITS: max_hits is not for meta rules",
        "rule NOPE: test \"refers to nothing\": unknown rule NOPE",
        "unknown verdict \"bounce\"",
    ];
    for w in want {
        assert!(
            problems.iter().any(|p| p.contains(w)),
            "missing {w:?} in:\n{}",
            problems.join("\n")
        );
    }
}

#[test]
fn compile_errors_name_the_rule() {
    let cases: &[(&str, &str)] = &[
        ("regex = 'a(b'", "rule BAD: bad regex"),
        ("regex = '(?<=a)b'", "rule BAD: bad regex"),
        // A program too large for the size limit is refused, not built.
        ("regex = '(?:\\w{50}){50}'", "rule BAD: bad regex"),
    ];
    for (body, want) in cases {
        let src = pack(&format!(
            "[[rule]]\nid = \"BAD\"\ntarget = \"body\"\n{body}\n"
        ));
        let (step, problems) = refusal(&src);
        assert_eq!(step, Step::Compile, "{body}");
        assert!(problems[0].contains(want), "{body}: {problems:?}");
    }
}

#[test]
fn load_errors_have_lines() {
    let (step, problems) = refusal("[pack]\nname = \"x\"\nversion = \"1\"\nbogus = 1\n");
    assert_eq!(step, Step::Load);
    assert!(problems[0].starts_with("<inline>:4:"), "{problems:?}");
    let (_, problems) = refusal(&pack(
        "[[rule]]\nid = \"A\"\ntarget = \"body\"\nliteral = [\"x\"]\n",
    ));
    assert!(problems[0].contains("unknown field"), "{problems:?}");
}

#[test]
fn thresholds_must_be_ordered() {
    let (_, problems) =
        refusal("[pack]\nname = \"x\"\nversion = \"1\"\n[thresholds]\ntag = 5.0\nreject = 3.0\n");
    assert!(
        problems[0].contains("threshold tag (5) is above reject (3)"),
        "{problems:?}"
    );
}

#[test]
fn snippet_tests_pass_and_fail() {
    let rules = r#"
[[rule]]
id = "LOTTO"
target = "subject"
words = ["lottery"]
score = 2.0
[[rule]]
id = "HDR"
target = "header:X-Mailer"
literals = ["massmail"]
score = 9.0
"#;
    let good = format!(
        "{rules}[[test]]\nname = \"ok\"\nsnippet = {{ subject = \"Lottery win\", \"header:X-Mailer\" = \"MassMail 2\" }}\nmust_hit = [\"LOTTO\", \"HDR\"]\nverdict = \"reject\"\n"
    );
    let compiled = compile_str(&pack(&good), &CompileOptions::default()).unwrap();
    assert_eq!(crate::run_tests(&compiled, None).unwrap(), 1);

    let bad = format!(
        "{rules}[[test]]\nname = \"wrong\"\nsnippet = {{ subject = \"Lottery win\" }}\nmust_hit = [\"HDR\"]\nmust_not_hit = [\"LOTTO\"]\nverdict = \"continue\"\n"
    );
    let compiled = compile_str(&pack(&bad), &CompileOptions::default()).unwrap();
    let err = crate::run_tests(&compiled, None).unwrap_err();
    let text = err.to_string();
    assert!(matches!(
        err,
        Error::Refused {
            step: Step::Test,
            ..
        }
    ));
    for want in [
        "rule HDR: test \"wrong\": rule HDR did not hit",
        "rule LOTTO: test \"wrong\": rule LOTTO hit but must not (matched \"Lottery\")",
        "verdict tag (score 2, rules LOTTO) but expected continue",
    ] {
        assert!(text.contains(want), "missing {want:?} in {text}");
    }
    // A message test without an extractor is a failure, not a pass.
    let msg = format!("{rules}[[test]]\nname = \"m\"\nmessage = \"Subject: x\\n\\nbody\"\n");
    let compiled = compile_str(&pack(&msg), &CompileOptions::default()).unwrap();
    assert!(crate::run_tests(&compiled, None).is_err());
}

#[test]
fn many_rules_compile_and_scan() {
    // 3,000 rules over one target, mixing literals, words and regexes with and without
    // factors: every one must still be found.
    let mut src = String::new();
    for i in 0..1000 {
        src.push_str(&format!(
            "[[rule]]\nid = \"L{i}\"\ntarget = \"body\"\nliterals = [\"lit{i}x\"]\n\
             [[rule]]\nid = \"R{i}\"\ntarget = \"body\"\nregex = 'reg{i}y\\d+'\n\
             [[rule]]\nid = \"S{i}\"\ntarget = \"body\"\nregex = '^\\d+-{i}-\\d+$'\n"
        ));
    }
    let compiled = compile_str(&pack(&src), &CompileOptions::default()).unwrap();
    for i in [0, 17, 999] {
        for (value, want) in [
            (format!("see lit{i}x here"), format!("L{i}")),
            (format!("a reg{i}y42 b"), format!("R{i}")),
            (format!("7-{i}-8"), format!("S{i}")),
        ] {
            let r = compiled.scan(&one(Field::Body, &value));
            let ids: Vec<&str> = r.packs[0].hits.iter().map(|h| h.rule.as_str()).collect();
            assert_eq!(ids, [want.as_str()], "{value}");
        }
    }
}

#[test]
fn prefilter_agrees_with_plain_regex() {
    // Every regex is scanned through the automaton/clauses/sets machinery and compared
    // with the same regex run directly: the prefilter may only skip values without a match.
    let regexes = [
        r"\byour\s+(?:password|login)\b",
        r"(?:deactivate|lock(?: up)?) (?:your )?mail\s?box|your mailbox (?:will|may) be locked",
        r"(?:abcd|defg)\d+wxyz\s+uvwx",
        r"(?-u)\bcaf\xe9\b",
        r"^subject: \S{5}",
        r"\$\d+(?:,\d{3})* (?:million|billion)",
        r"[a-z]{3}\d{4}",
        r"(?:winner)?!!!!",
        r"(?s)start.*?finish",
        r"(?i)viagra|cialis",
        r"\bwinner\b",
        r"(?m)^lottery$",
        r"prize.{0,3}\z",
        r"claim(?:ed)? (?:now|today)\b",
        // Windows around overlapping factor occurrences; matches counted without overlap.
        r"xxxx",
        r"(?m)^\w{0,5}money\b",
        r"\bfree\W{0,3}money\W{0,3}now",
        r"money.{0,10}$",
        r"(?m)money.{0,10}$",
        r"\w+@\w+\.example",
        // Anchored at the occurrences of the literals every match starts with; one of
        // them (`subscrib`) also occurs inside another (`unsubscrib`).
        r"\b(?:un)?(?:subscrib|register)\w*",
        r"\b(?:reply|respond)\b[^.]{0,20}\b(?:to|through)\b",
        // No literal factor: run around the rare bytes `@`, `%` and `$`.
        r"\b[a-z]{2,5}@[a-z]{2,5}\b",
        r"\d+%|\$\d+",
        // Searched around runs of a byte class: matches at either end of a long run and
        // in its middle, several in one run, and a line longer than 40 bytes.
        r"q{4}z",
        r"zq{4}",
        r"x{3}",
        r"[a-z]{2}\s{15}[a-z]{2}",
        r"^[^\r\n]{40}",
        // A run through look-arounds: twelve bytes of `[q\s]`.
        r"(?:\bq{2}\b\s){4}",
    ];
    let texts: &[&[u8]] = &[
        b"qqqqqqqqqqz zqqqqqqqqqq qqq z qqqqqqqqqqqq",
        b"xxxxxxxxxxxxxxx yxxxxy",
        b"qq qq qq qq qq x qq qq qq qq\nqq qqq qq qq qq qq qq\tqq qq qq ",
        b"ab                    cd   ef                 gh",
        b"short line\nthis line is quite a lot longer than forty bytes\nend",
        b"\
          ab                 cd\n",
        b"please reset your  PASSWORD now",
        b"your login",
        b"to unsubscribe, or to subscribe, or unregister",
        b"xunsubscribe subscribed",
        // More starts than are searched anchored in one value: windows instead.
        b"subscribe unsubscribe register subscribe unsubscribe register subscribe \
          unsubscribe register subscribe unsubscribe register subscribe unsubscribe \
          register subscribe unsubscribe register",
        b"please reply directly to me. respond to",
        b"your pass word",
        b"we will lock up your mailbox",
        b"Your mailbox may be locked",
        b"mailbox deactivate",
        b"defg77wxyz  uvwx",
        b"abcd wxyz uvwx",
        b"un caf\xe9 noir",
        b"cafe",
        b"subject: hello world",
        b"re: subject: hi",
        b"wire $12,000,000 million",
        b"abc1234",
        b"!!!!",
        b"!!!",
        b"start\nand then\nfinish",
        b"finish start",
        b"CIALIS",
        b"",
        b"winners winner's",
        b"the winnerx winner",
        b"lottery ticket\nlottery\nx",
        b"lottery tickets",
        b"prize!",
        b"prize!!!!\n",
        b"claimed todays claim now",
        b"claim todayx",
        b"xxxxxxxxxx",
        b"bigmoney\nmoney moneymoney\nsomemoney, money",
        b"free - money !! now free money now freemoney now",
        b"money back\nmoney\nmoney is here",
        b"a@b.example and cc@dd.example\nee@ff.example",
        b"ab@cd xyzzyq@ab a@b 50% off $25 or $1%",
    ];
    let mut src = String::new();
    for (i, re) in regexes.iter().enumerate() {
        src.push_str(&format!(
            "[[rule]]\nid = \"R{i}\"\ntarget = \"body\"\nregex = '{re}'\ncase_sensitive = false\n"
        ));
    }
    let compiled = compile_str(&pack(&src), &CompileOptions::default()).unwrap();
    for text in texts {
        let mut t = Targets::new();
        t.push(Field::Body, text.to_vec());
        let r = compiled.scan(&t);
        // Same hits, counts and matched text as every regex over the whole value.
        assert_eq!(
            r,
            compiled.scan_reference(&t),
            "{:?}",
            String::from_utf8_lossy(text)
        );
        for (i, re) in regexes.iter().enumerate() {
            let direct = regex::bytes::Regex::new(&format!("(?i){re}"))
                .unwrap()
                .is_match(text);
            let scanned = r.packs[0].hits.iter().any(|h| h.rule == format!("R{i}"));
            assert_eq!(
                scanned,
                direct,
                "{re} on {:?}",
                String::from_utf8_lossy(text)
            );
        }
    }
}

#[test]
fn regex_matches_are_counted_per_value() {
    let rules = "[[rule]]\nid = \"DIGIT\"\ntarget = \"rcpt-to\"\nregex = '\\d'\n\
                 [[rule]]\nid = \"FIVE\"\nmeta = \"hits(DIGIT) >= 5\"\n";
    let compiled = compile_str(&pack(rules), &CompileOptions::default()).unwrap();
    let cases: &[(&[&str], u32, bool)] = &[
        (&["a1", "b2"], 2, false),
        (&["123", "45"], 5, true),
        (&["none"], 0, false),
    ];
    for (values, count, five) in cases {
        let mut t = Targets::new();
        for v in *values {
            t.push_str(Field::RcptTo, v.to_string());
        }
        let r = compiled.scan(&t);
        let got = r.packs[0]
            .hits
            .iter()
            .find(|h| h.rule == "DIGIT")
            .map_or(0, |h| h.count);
        assert_eq!(got, *count, "{values:?}");
        assert_eq!(
            r.packs[0].hits.iter().any(|h| h.rule == "FIVE"),
            *five,
            "{values:?}"
        );
    }
}

#[test]
fn max_hits_stops_counting() {
    // Literals, factored regexes, rare-byte regexes and set regexes all stop at max_hits,
    // across the values of a target, and the fast path agrees with the reference scan.
    let rules = "[[rule]]\nid = \"LIT\"\ntarget = \"rcpt-to\"\nliterals = [\"ab\"]\nmax_hits = 3\n\
                 [[rule]]\nid = \"FACTORED\"\ntarget = \"rcpt-to\"\nregex = 'abc\\d'\nmax_hits = 2\n\
                 [[rule]]\nid = \"RARE\"\ntarget = \"rcpt-to\"\nregex = '\\w@\\w'\nmax_hits = 1\n\
                 [[rule]]\nid = \"SET\"\ntarget = \"rcpt-to\"\nregex = '\\d'\nmax_hits = 4\n\
                 [[rule]]\nid = \"ALL\"\ntarget = \"rcpt-to\"\nregex = '\\d'\n";
    let compiled = compile_str(&pack(rules), &CompileOptions::default()).unwrap();
    let mut t = Targets::new();
    t.push_str(Field::RcptTo, "abc1 abc2 a@b c@d");
    t.push_str(Field::RcptTo, "abc3 ab e@f 4 5 6");
    let r = compiled.scan(&t);
    assert_eq!(r, compiled.scan_reference(&t));
    let count = |id: &str| {
        r.packs[0]
            .hits
            .iter()
            .find(|h| h.rule == id)
            .map(|h| h.count)
    };
    assert_eq!(count("LIT"), Some(3));
    assert_eq!(count("FACTORED"), Some(2));
    assert_eq!(count("RARE"), Some(1));
    assert_eq!(count("SET"), Some(4));
    assert_eq!(count("ALL"), Some(6));
    // The first match is still the first in the message.
    let first = r.packs[0]
        .hits
        .iter()
        .find(|h| h.rule == "FACTORED")
        .unwrap();
    assert_eq!(first.matched.as_deref(), Some("abc1"));
}

#[test]
fn literals_with_white_space_match_it_exactly() {
    // The literal search folds white space to a space; a literal holding a tab still
    // matches only a tab (in any letter case unless case-sensitive).
    let rules = "[[rule]]\nid = \"TAB\"\ntarget = \"subject\"\nliterals = [\"a\\tb\"]\n\
                 [[rule]]\nid = \"TAB_EXACT\"\ntarget = \"subject\"\nliterals = [\"a\\tb\"]\ncase_sensitive = true\n\
                 [[rule]]\nid = \"SPACE\"\ntarget = \"subject\"\nliterals = [\"a b\"]\n";
    let cases: &[(&str, &[&str])] = &[
        ("a\tb", &["TAB", "TAB_EXACT"]),
        ("A\tB", &["TAB"]),
        ("a b", &["SPACE"]),
        ("a\nb", &[]),
    ];
    for (subject, want) in cases {
        let got: Vec<String> = hits(rules, &one(Field::Subject, subject))
            .into_iter()
            .map(|h| h.0)
            .collect();
        assert_eq!(got, *want, "{subject:?}");
    }
}

#[test]
fn regex_sets_share_a_pass_by_kind() {
    // Regexes without a factor: two that match any text early, two anchored at the start
    // of a value, and eight obfuscated names with gaps (ASCII classes, as imported
    // SpamAssassin rules have), whose union stays small.
    let names = [
        "viagra", "cialis", "valium", "meridia", "soma", "ambien", "levitra", "tenuate",
    ];
    let mut src = String::new();
    let mut add = |id: &str, re: &str| {
        src.push_str(&format!(
            "[[rule]]\nid = \"{id}\"\ntarget = \"body\"\nregex = '{re}'\n"
        ));
    };
    add("EARLY1", r"\S");
    add("EARLY2", r"(?i)e");
    add("START1", r"^.{16}");
    add("START2", r"^\s*\S{1,60}\s*$");
    for n in names {
        let gapped: Vec<String> = n.chars().map(|c| format!("[{c}]")).collect();
        add(
            &n.to_uppercase(),
            &format!(r"(?i-u)\b{}\b", gapped.join(r"[_\W]{0,3}")),
        );
    }
    let compiled = compile_str(&pack(&src), &CompileOptions::default()).unwrap();
    let m = matcher(&compiled, Field::Body);
    let sets: Vec<Vec<&str>> = m
        .sets
        .iter()
        .map(|(_, members)| {
            let mut ids: Vec<&str> = members
                .iter()
                .map(|rr| compiled.rules[rr.rule].id.as_str())
                .collect();
            ids.sort_unstable();
            ids
        })
        .collect();
    let mut drugs: Vec<String> = names.iter().map(|n| n.to_uppercase()).collect();
    drugs.sort_unstable();
    assert_eq!(sets.len(), 3, "{sets:?}");
    assert!(sets.contains(&vec!["EARLY1", "EARLY2"]), "{sets:?}");
    assert!(sets.contains(&vec!["START1", "START2"]), "{sets:?}");
    assert!(
        sets.contains(&drugs.iter().map(String::as_str).collect()),
        "{sets:?}"
    );
    // One pass still finds each member.
    let ids = |text: &str| -> Vec<String> {
        let r = compiled.scan(&one(Field::Body, text));
        let mut v: Vec<String> = r.packs[0].hits.iter().map(|h| h.rule.clone()).collect();
        v.sort_unstable();
        v
    };
    assert_eq!(
        ids("get v-i-a-g-r-a and s.o.m.a now"),
        ["EARLY1", "EARLY2", "SOMA", "START1", "VIAGRA"]
    );
    assert_eq!(ids("  oneword "), ["EARLY1", "EARLY2", "START2"]);
    assert_eq!(ids("  \n"), Vec::<String>::new());
}

#[test]
fn url_regexes_whose_factor_every_link_has_run_in_a_set() {
    let rules = r#"
[[rule]]
id = "DOM_DOTDOT"
target = "url"
regex = '://[^/]+\.\.'
[[rule]]
id = "HTTP_IP"
target = "url"
regex = '^https?://\d+\.\d+\.\d+\.\d+/'
[[rule]]
id = "TRACKED_GIF"
target = "url"
regex = '\.gif\?track=\w+'
[[rule]]
id = "BODY_LINK"
target = "body"
regex = 'https?://[^/]+\.\.'
"#;
    let compiled = compile_str(&pack(rules), &CompileOptions::default()).unwrap();
    let of = |field: Field| {
        let m = matcher(&compiled, field);
        let ids = |rrs: &mut dyn Iterator<Item = &crate::compile::RegexRule>| {
            let mut v: Vec<&str> = rrs.map(|rr| compiled.rules[rr.rule].id.as_str()).collect();
            v.sort_unstable();
            v
        };
        (
            ids(&mut m.factored.iter()),
            ids(&mut m.sets.iter().flat_map(|(_, members)| members)),
        )
    };
    // `://` and `http://` are in every link: those regexes share a set pass; `.gif?track=`
    // is not, so that regex waits for its factor. In prose `http://` is rare and stays a
    // factor.
    assert_eq!(
        of(Field::Url),
        (vec!["TRACKED_GIF"], vec!["DOM_DOTDOT", "HTTP_IP"])
    );
    assert_eq!(of(Field::Body), (vec!["BODY_LINK"], vec![]));
    let mut t = Targets::new();
    for url in [
        "http://example..com/",
        "http://192.0.2.1/x",
        "https://img.example/a.gif?track=u1",
        "https://example.com/",
    ] {
        t.push_str(Field::Url, url.to_string());
    }
    let r = compiled.scan(&t);
    let mut got: Vec<(&str, Option<&str>)> = r.packs[0]
        .hits
        .iter()
        .map(|h| (h.rule.as_str(), h.matched.as_deref()))
        .collect();
    got.sort_unstable();
    assert_eq!(
        got,
        [
            ("DOM_DOTDOT", Some("://example..")),
            ("HTTP_IP", Some("http://192.0.2.1/")),
            ("TRACKED_GIF", Some(".gif?track=u1")),
        ]
    );
}

#[test]
fn header_values_reach_the_rule_of_their_name_in_message_order() {
    let rules = r#"
[[rule]]
id = "MAILER"
target = "header:X-Mailer"
regex = 'bulk\w*'
score = 1.0
[[rule]]
id = "RECEIVED"
target = "header:received"
literals = ["relay"]
score = 1.0
[[rule]]
id = "ANY"
target = "header"
regex = '(?i)^x-mailer: '
score = 1.0
"#;
    let compiled = compile_str(&pack(rules), &CompileOptions::default()).unwrap();
    let mut t = Targets::new();
    t.push_header("Received", "from a by relay1");
    t.push_header("x-MAILER", "bulkmail 2");
    t.push_header("Subject", "bulky");
    t.push_header("X-Mailer", "bulksender");
    t.push_header("RECEIVED", "from b by relay2");
    let r = compiled.scan(&t);
    let got: Vec<(&str, u32, Option<&str>)> = r.packs[0]
        .hits
        .iter()
        .map(|h| (h.rule.as_str(), h.count, h.matched.as_deref()))
        .collect();
    assert_eq!(
        got,
        [
            ("MAILER", 2, Some("bulkmail")),
            ("RECEIVED", 2, Some("relay")),
            ("ANY", 2, Some("x-MAILER: ")),
        ]
    );
    // A message without those headers: no hit, and the other rules still run.
    let mut t = Targets::new();
    t.push_header("Subject", "bulk relay");
    assert!(compiled.scan(&t).packs[0].hits.is_empty());
}

#[test]
fn regexes_are_built_on_their_first_search() {
    let rules = r#"
[[rule]]
id = "INVOICE_NO"
target = "body"
regex = 'invoice\s+no\.?\s*\d{6,}'
[[rule]]
id = "WIRE"
target = "subject"
regex = 'wire\s+transfer'
"#;
    let compiled = compile_str(&pack(rules), &CompileOptions::default()).unwrap();
    let built = |id: &str| {
        compiled
            .matchers
            .iter()
            .flat_map(|m| &m.factored)
            .find(|rr| compiled.rules[rr.rule].id == id)
            .unwrap_or_else(|| panic!("{id} is not factored"))
            .re
            .is_built()
    };
    // Compiling checked both regexes but built neither searcher.
    assert!(!built("INVOICE_NO") && !built("WIRE"));
    // A body without the factor leaves the regex unbuilt.
    let r = compiled.scan(&one(Field::Body, "nothing to see here"));
    assert!(r.packs[0].hits.is_empty());
    assert!(!built("INVOICE_NO"));
    // Its factor makes it a candidate: built, searched, and it matches.
    let r = compiled.scan(&one(Field::Body, "re: invoice no. 1234567 attached"));
    assert_eq!(r.packs[0].hits[0].rule, "INVOICE_NO");
    assert_eq!(
        r.packs[0].hits[0].matched.as_deref(),
        Some("invoice no. 1234567")
    );
    assert!(built("INVOICE_NO") && !built("WIRE"));
}

#[test]
fn markup_is_priced_as_markup() {
    // One rule on text and on HTML as written: `>` and `<` are rare in mail text, so there
    // the regex is searched around them; in markup they are in every tag, so there it joins
    // the target's regex set instead of searching around each one.
    let rules = r#"
[[rule]]
id = "SINGLET"
target = ["text", "html-raw"]
regex = '>\s*[a-z]\s*<'
"#;
    let compiled = compile_str(&pack(rules), &CompileOptions::default()).unwrap();
    let routes = |field: Field| {
        let m = matcher(&compiled, field);
        (
            m.byte_filtered.len(),
            m.sets
                .iter()
                .map(|(_, members)| members.len())
                .sum::<usize>(),
        )
    };
    assert_eq!(routes(Field::Text), (1, 0));
    assert_eq!(routes(Field::HtmlRaw), (0, 1));
    // Either way it finds the same matches.
    for field in [Field::Text, Field::HtmlRaw] {
        assert_eq!(
            hits(rules, &one(field, "<p>see</p><b> x </b><i>two</i>")),
            [("SINGLET".to_string(), Some("> x <".to_string()))],
            "{field:?}"
        );
        assert!(hits(rules, &one(field, "<p>none here</p>")).is_empty());
    }
}

#[test]
fn automaton_patterns_are_the_folded_literals_and_factors_of_a_target() {
    let rules = r#"
[[rule]]
id = "PILLS"
target = "body"
literals = ["Cheap\tPills"]

[[rule]]
id = "CLICK"
target = "body"
regex = 'Click\s+HERE\s+now'
"#;
    let compiled = compile_str(&pack(rules), &CompileOptions::default()).unwrap();
    let patterns = compiled.automaton_patterns(&crate::Target::Field(Field::Body));
    // The literal is lower-cased with its tab as a space; the regex gives a factor, a
    // piece of every text it matches, as folded.
    assert_eq!(patterns.len(), 2, "{patterns:?}");
    assert!(patterns.iter().any(|p| p == b"cheap pills"), "{patterns:?}");
    let matched = b"click here now";
    assert!(
        patterns
            .iter()
            .any(|p| p != b"cheap pills" && matched.windows(p.len()).any(|w| w == &p[..])),
        "{patterns:?}"
    );
    assert!(
        compiled
            .automaton_patterns(&crate::Target::Field(Field::Subject))
            .is_empty()
    );
}
