//! `[page]`: the box's own web page for the clinic's technician.

use std::net::SocketAddr;

use serde::Deserialize;

/// The language of the page and of the technician-facing CLI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum Language {
    /// Simplified Chinese, the default.
    #[default]
    #[serde(rename = "zh-CN")]
    ZhCn,
    #[serde(rename = "en")]
    En,
}

impl Language {
    /// The BCP 47 tag (`zh-CN`, `en`).
    pub fn tag(self) -> &'static str {
        match self {
            Language::ZhCn => "zh-CN",
            Language::En => "en",
        }
    }

    /// The language a tag or a `LANG` value names (`zh_CN.UTF-8`, `en-US`);
    /// `None` for one we have no catalogue for.
    pub fn from_tag(tag: &str) -> Option<Language> {
        let t = tag.to_ascii_lowercase().replace('_', "-");
        if t.starts_with("zh") {
            Some(Language::ZhCn)
        } else if t.starts_with("en") {
            Some(Language::En)
        } else {
            None
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageSection {
    /// Whether the box serves its page at all.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Where the page listens: loopback by default; the address of the
    /// clinic LAN interface to open it from the clinic's PCs and phones.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The page's language until the reader switches (`zh-CN` or `en`).
    #[serde(default)]
    pub language: Language,
    /// The PIN that unlocks the page's actions (diagnostics, the support
    /// bundle): 4 to 12 digits. Without one the page is read-only.
    #[serde(default)]
    pub pin: Option<String>,
}

impl PageSection {
    /// Why the PIN is not acceptable, if it is not.
    pub fn pin_problem(&self) -> Option<&'static str> {
        let pin = self.pin.as_deref()?;
        let digits = pin.chars().all(|c| c.is_ascii_digit());
        (!digits || !(4..=12).contains(&pin.len()))
            .then_some("the page's PIN is 4 to 12 digits, e.g. \"246810\"")
    }
}

impl Default for PageSection {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: default_listen(),
            language: Language::default(),
            pin: None,
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
