//! Identifiers: recognising the forms of ids the bot is given (Entra GUIDs).

/// True for a GUID in its 8-4-4-4-12 hexadecimal form (any case, no braces): tenant ids,
/// client ids, object ids.
pub fn is_guid(value: &str) -> bool {
    let groups: Vec<&str> = value.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(group, len)| group.len() == len && group.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::is_guid;

    #[test]
    fn only_the_8_4_4_4_12_hexadecimal_form_is_a_guid() {
        assert!(is_guid("11111111-2222-3333-4444-555555555555"));
        assert!(is_guid("8EAEF023-2B34-4DA1-9BAA-8BC8C9D6A490"));
        assert!(!is_guid("11111111-2222-3333-4444-55555555555"));
        assert!(!is_guid("8eaef023-2b34-4da1-9baa-8bc8c9d6a49"));
        assert!(!is_guid("{11111111-2222-3333-4444-555555555555}"));
        assert!(!is_guid("not-a-guid"));
        assert!(!is_guid("1111111g-2222-3333-4444-555555555555"));
    }
}
