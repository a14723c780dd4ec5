//! Every text a clinic technician reads (the box's page, and the CLI's
//! technician commands), from Project Fluent catalogues in `i18n/`: Chinese
//! (zh-CN) by default, English switchable. A message missing from one
//! catalogue falls back to the other, then to its id, never to nothing.

use std::sync::OnceLock;

use fluent_bundle::concurrent::FluentBundle;
use fluent_bundle::{FluentArgs, FluentResource, FluentValue};

pub use yilian_gateway_config::Language;

const ZH_CN: &str = include_str!("../i18n/zh-CN.ftl");
const EN: &str = include_str!("../i18n/en.ftl");

/// Both catalogues, parsed once.
pub struct Catalog {
    zh: FluentBundle<FluentResource>,
    en: FluentBundle<FluentResource>,
}

fn bundle(tag: &str, text: &str) -> FluentBundle<FluentResource> {
    let lang = tag.parse().unwrap_or_default();
    let mut b = FluentBundle::new_concurrent(vec![lang]);
    // The page is HTML and the CLI a terminal: no bidi isolation marks.
    b.set_use_isolating(false);
    // The catalogues are ours and tested: a syntax error would show as the
    // message ids, never as a crash.
    let resource = FluentResource::try_new(text.to_owned()).unwrap_or_else(|(r, _)| r);
    let _ = b.add_resource(resource);
    b
}

impl Catalog {
    /// The box's catalogues, parsed at first use.
    pub fn get() -> &'static Catalog {
        static CATALOG: OnceLock<Catalog> = OnceLock::new();
        CATALOG.get_or_init(|| Catalog::new(ZH_CN, EN))
    }

    /// A catalogue pair of another tool's texts (the bench's demo), with
    /// the same fallbacks.
    pub fn new(zh_cn: &str, en: &str) -> Catalog {
        Catalog {
            zh: bundle("zh-CN", zh_cn),
            en: bundle("en", en),
        }
    }

    fn bundles(&self, lang: Language) -> [&FluentBundle<FluentResource>; 2] {
        match lang {
            Language::ZhCn => [&self.zh, &self.en],
            Language::En => [&self.en, &self.zh],
        }
    }

    /// The message `id` in `lang`.
    pub fn t(&self, lang: Language, id: &str) -> String {
        self.t_args(lang, id, &[])
    }

    /// The message `id` in `lang`, with arguments.
    pub fn t_args(&self, lang: Language, id: &str, args: &[(&str, FluentValue<'_>)]) -> String {
        let mut fargs = FluentArgs::new();
        for (k, v) in args {
            fargs.set(*k, v.clone());
        }
        for b in self.bundles(lang) {
            if let Some(pattern) = b.get_message(id).and_then(|m| m.value()) {
                let mut errors = Vec::new();
                return b
                    .format_pattern(pattern, Some(&fargs), &mut errors)
                    .into_owned();
            }
        }
        id.to_owned()
    }
}

/// The ids of a catalogue's messages in the order written (a test's
/// check that two catalogues say the same things, and each once).
pub fn message_ids(text: &str) -> Vec<String> {
    let resource = FluentResource::try_new(text.to_owned()).unwrap_or_else(|(r, _)| r);
    resource
        .entries()
        .filter_map(|e| match e {
            fluent_syntax::ast::Entry::Message(m) => Some(m.id.name.to_owned()),
            _ => None,
        })
        .collect()
}

/// The language of the CLI: `LANG` when it names one we have a catalogue
/// for (`zh_CN.UTF-8`, `en_US.UTF-8`), else the configured one (`C.UTF-8`
/// says nothing about the reader).
pub fn cli_language(configured: Language) -> Language {
    std::env::var("LANG")
        .ok()
        .and_then(|l| Language::from_tag(&l))
        .unwrap_or(configured)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(text: &str) -> Vec<String> {
        assert!(
            FluentResource::try_new(text.to_owned()).is_ok(),
            "the catalogue parses"
        );
        let mut v = message_ids(text);
        v.sort();
        v
    }

    #[test]
    fn both_catalogues_parse_and_say_the_same_things() {
        assert_eq!(ids(ZH_CN), ids(EN));
        // A message defined twice shows only one of its texts, wherever
        // it is used.
        for catalogue in [ZH_CN, EN] {
            let mut v = ids(catalogue);
            let n = v.len();
            v.dedup();
            assert_eq!(v.len(), n, "a message id is defined twice");
        }
    }

    #[test]
    fn messages_format_with_their_arguments() {
        let c = Catalog::get();
        assert_eq!(c.t(Language::ZhCn, "status-fault"), "故障");
        assert_eq!(c.t(Language::En, "status-fault"), "fault");
        assert_eq!(
            c.t_args(
                Language::En,
                "spool-usage",
                &[("used", "1.0 GiB".into()), ("quota", "20.0 GiB".into())]
            ),
            "1.0 GiB used of 20.0 GiB"
        );
        assert_eq!(c.t(Language::En, "no-such-message"), "no-such-message");
    }
}
