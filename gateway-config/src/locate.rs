//! The line a key sits on, for errors found after parsing (an AE title too
//! long, two listeners on one port): serde knows the line of a value it
//! could not read, but the checks that run on the parsed configuration
//! know only the key's path (`dicom[0].ae_title`).

/// The 1-based line of `path` (`spool.reserve`, `dicom[0].ae_title`,
/// `hl7[1].peer[0].charset`) in `text`, or of the nearest table above it
/// that exists.
pub fn line_of(text: &str, path: &str) -> Option<usize> {
    let doc = toml::de::DeTable::parse(text).ok()?;
    let mut table = doc.get_ref();
    let mut found: Option<std::ops::Range<usize>> = None;
    for segment in path.split('.') {
        let (name, index) = match segment.split_once('[') {
            Some((n, rest)) => (n, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (segment, None),
        };
        let Some((key, value)) = table.iter().find(|(k, _)| k.get_ref().as_ref() == name) else {
            break;
        };
        found = Some(key.span());
        let mut value = value;
        if let Some(i) = index {
            let toml::de::DeValue::Array(items) = value.get_ref() else {
                break;
            };
            let Some(item) = items.get(i) else { break };
            found = Some(item.span());
            value = item;
        }
        match value.get_ref() {
            toml::de::DeValue::Table(t) => table = t,
            _ => {
                found = Some(key.span()).filter(|_| index.is_none()).or(found);
                break;
            }
        }
    }
    let at = found?.start;
    Some(text.get(..at)?.matches('\n').count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "[spool]\ndir = \"x\"\nreserve = \"4 MiB\"\n\n[[dicom]]\nname = \"a\"\n\n[[dicom]]\nname = \"b\"\nae_title = \"TOO_LONG_FOR_AN_AE\"\n\n[[hl7]]\nname = \"h\"\n[[hl7.peer]]\naddress = \"1.2.3.4\"\ncharset = \"big5\"\n";

    #[test]
    fn keys_tables_and_array_items_are_found() {
        assert_eq!(line_of(TEXT, "spool.reserve"), Some(3));
        assert_eq!(line_of(TEXT, "dicom[1].ae_title"), Some(10));
        assert_eq!(line_of(TEXT, "dicom[1].name"), Some(9));
        assert_eq!(line_of(TEXT, "hl7[0].peer[0].charset"), Some(16));
        // A key left out: the table it belongs to.
        assert_eq!(line_of(TEXT, "dicom[0].ae_title"), Some(5));
        assert_eq!(line_of(TEXT, "metrics.listen"), None);
    }
}
