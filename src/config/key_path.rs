//! A dotted key as errors name it (`server.limits.max_connections`, `targets[1].mount`): split
//! into its steps, to find it in the file's text or take it out of the table.

/// One step of a key: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Step {
    Key(String),
    Index(usize),
}

/// The steps of `key`, or `None` for a name that is not a key path (an `IVCA_*` variable's
/// name, a key with `?` for a step serde could not name).
pub(super) fn steps(key: &str) -> Option<Vec<Step>> {
    let mut out = Vec::new();
    for part in key.split('.') {
        let (name, mut rest) = part.split_once('[').map_or((part, ""), |(n, r)| (n, r));
        if name.is_empty() || name == "?" || name.contains(char::is_whitespace) {
            return None;
        }
        out.push(Step::Key(name.to_owned()));
        while !rest.is_empty() {
            let (index, after) = rest.split_once(']')?;
            out.push(Step::Index(index.parse().ok()?));
            rest = after.strip_prefix('[').unwrap_or(after);
            if !after.is_empty() && !after.starts_with('[') {
                return None;
            }
        }
    }
    Some(out)
}

/// Removes the value at `steps` from `table`; a path that ends at an array element takes the
/// whole array with it (removing one element would renumber its neighbours). Whether anything
/// was removed.
pub(super) fn remove(table: &mut toml::Table, steps: &[Step]) -> bool {
    match steps {
        [Step::Key(k)] => table.remove(k).is_some(),
        [Step::Key(k), Step::Index(_)] => table.remove(k).is_some(),
        [Step::Key(k), rest @ ..] => table.get_mut(k).is_some_and(|v| remove_in(v, rest)),
        _ => false,
    }
}

fn remove_in(value: &mut toml::Value, steps: &[Step]) -> bool {
    match (value, steps) {
        (toml::Value::Table(t), _) => remove(t, steps),
        (toml::Value::Array(items), [Step::Index(i), rest @ ..]) if !rest.is_empty() => {
            items.get_mut(*i).is_some_and(|v| remove_in(v, rest))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_of_keys() {
        assert_eq!(
            steps("targets[1].mount"),
            Some(vec![
                Step::Key("targets".into()),
                Step::Index(1),
                Step::Key("mount".into())
            ])
        );
        assert_eq!(
            steps("a[0][2]"),
            Some(vec![Step::Key("a".into()), Step::Index(0), Step::Index(2)])
        );
        assert_eq!(
            steps("IVCA_VAULT"),
            Some(vec![Step::Key("IVCA_VAULT".into())])
        );
        assert_eq!(steps("a.?"), None);
        assert_eq!(steps("a / b"), None);
        assert_eq!(steps("a[x]"), None);
    }

    #[test]
    fn removing_a_key() {
        let mut t: toml::Table = "a = 1\n[s]\nb = 2\nc = [1, 2]\n".parse().unwrap();
        assert!(remove(&mut t, &steps("s.b").unwrap()));
        assert!(!remove(&mut t, &steps("s.b").unwrap()));
        assert!(remove(&mut t, &steps("s.c[1]").unwrap()));
        assert!(!t["s"].as_table().unwrap().contains_key("c"));
        assert!(remove(&mut t, &steps("a").unwrap()));
        let mut t: toml::Table = "[[t]]\nm = 1\nn = 2\n[[t]]\nm = 3\n".parse().unwrap();
        assert!(remove(&mut t, &steps("t[0].m").unwrap()));
        assert_eq!(
            t["t"].as_array().unwrap().len(),
            2,
            "the other targets stay"
        );
        assert!(!t["t"][0].as_table().unwrap().contains_key("m"));
        assert!(!remove(&mut t, &steps("a.x").unwrap()));
    }
}
