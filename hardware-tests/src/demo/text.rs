//! What the demo prints, in Chinese or English: the language the box's CLI
//! would choose (`LANG` when it names one, else Chinese), from the
//! catalogues in `i18n/demo.*.ftl`.

use std::sync::OnceLock;

use yilian_gateway::i18n::{Catalog, Language};

const ZH_CN: &str = include_str!("../../i18n/demo.zh-CN.ftl");
const EN: &str = include_str!("../../i18n/demo.en.ftl");

fn catalog() -> &'static Catalog {
    static CATALOG: OnceLock<Catalog> = OnceLock::new();
    CATALOG.get_or_init(|| Catalog::new(ZH_CN, EN))
}

/// The demo's voice in one language.
#[derive(Clone, Copy)]
pub struct Say(Language);

impl Say {
    /// The language the environment asks for, as the box's CLI reads it.
    pub fn from_env() -> Say {
        Say(yilian_gateway::i18n::cli_language(Language::ZhCn))
    }

    /// The message `id` with its arguments.
    pub fn t(self, id: &str, args: &[(&str, &str)]) -> String {
        let args: Vec<_> = args.iter().map(|(k, v)| (*k, (*v).into())).collect();
        catalog().t_args(self.0, id, &args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use yilian_gateway::i18n::message_ids;

    #[test]
    fn both_catalogues_say_every_message_the_demo_uses_once() {
        let mut zh = message_ids(ZH_CN);
        let mut en = message_ids(EN);
        zh.sort();
        en.sort();
        assert_eq!(zh, en);
        let n = zh.len();
        zh.dedup();
        assert_eq!(zh.len(), n, "a message id is defined twice");
        // Every id the demo names is in the catalogues (a missing one
        // would print as its id).
        let source = include_str!("mod.rs");
        let used: Vec<&str> = source
            .split('"')
            .filter(|s| {
                s.starts_with("demo-") && s.chars().all(|c| c.is_ascii_lowercase() || c == '-')
            })
            .collect();
        assert!(used.len() > 20, "{used:?}");
        for id in used {
            assert!(zh.iter().any(|z| z == id), "{id} is in no catalogue");
        }
    }

    #[test]
    fn messages_read_in_each_language() {
        let line = |lang| Say(lang).t("demo-all-arrived", &[("count", "6"), ("secs", "1.2")]);
        assert_eq!(line(Language::En), "All 6 samples at central after 1.2 s.");
        assert_eq!(
            line(Language::ZhCn),
            "全部 6 个样例已到达中心，用时 1.2 秒。"
        );
    }
}
