//! Running one pack test case.

use crate::compile::{CompiledRules, CompiledTest, parse_action};
use crate::error::Problem;
use crate::schema::OneOrMany;
use crate::target::{Target, Targets};

/// Builds targets from a snippet: each key is a target name, each value one or more values.
fn snippet_targets(snippet: &std::collections::BTreeMap<String, OneOrMany>) -> Targets<'_> {
    let mut t = Targets::new();
    for (key, values) in snippet {
        let values = match values {
            OneOrMany::One(v) => std::slice::from_ref(v),
            OneOrMany::Many(v) => v.as_slice(),
        };
        for v in values {
            match Target::parse(key) {
                Some(Target::AllHeaders) => {
                    let (name, value) = v.split_once(':').unwrap_or((v.as_str(), ""));
                    t.push_header(name.trim(), value.trim());
                }
                Some(Target::Header(_)) => {
                    // Keep the name as written (after `header:`).
                    let name = key.strip_prefix("header:").unwrap_or(key);
                    t.push_header(name, v.as_str());
                }
                Some(Target::Field(f)) => t.push_str(f, v.as_str()),
                None => {}
            }
        }
    }
    t
}

/// Runs one test; returns its failures.
pub(crate) fn run(
    rules: &CompiledRules,
    test: &CompiledTest,
    extractor: Option<&dyn crate::Extractor>,
) -> Vec<Problem> {
    let pack = &rules.packs[test.pack];
    let name = test.def.name.get_ref();
    let fail = |m: String| Problem::new(&pack.file, format!("test {name:?}: {m}")).at(test.line);
    let result = match (&test.message, &test.def.snippet) {
        (Some(msg), _) => match extractor {
            Some(x) => rules.scan(&x.extract(msg, &test.def.envelope)),
            None => return vec![fail("message tests need a MIME extractor".into())],
        },
        (None, Some(snippet)) => rules.scan(&snippet_targets(snippet)),
        (None, None) => return vec![fail("nothing to scan".into())],
    };
    let Some(pr) = result.pack(&pack.name) else {
        return vec![fail("pack missing from the result".into())];
    };
    let hit = |id: &str| pr.hits.iter().any(|h| h.rule == id);
    let mut out = Vec::new();
    for id in &test.def.must_hit {
        if !hit(id) {
            out.push(fail(format!("rule {id} did not hit")).rule(id.clone()));
        }
    }
    for id in &test.def.must_not_hit {
        if let Some(h) = pr.hits.iter().find(|h| h.rule == *id) {
            let m = h.matched.as_deref().unwrap_or("");
            out.push(fail(format!("rule {id} hit but must not (matched {m:?})")).rule(id.clone()));
        }
    }
    if let Some(want) = test.def.verdict.as_deref().and_then(parse_action)
        && pr.action != want
    {
        let rules_hit: Vec<&str> = pr.hits.iter().map(|h| h.rule.as_str()).collect();
        out.push(fail(format!(
            "verdict {} (score {}, rules {}) but expected {}",
            pr.action.as_str(),
            pr.score,
            rules_hit.join(","),
            want.as_str()
        )));
    }
    out
}
