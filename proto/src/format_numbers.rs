//! Says which number of a config file does not fit its field.
//!
//! pbjson reads an integer field through an untagged enum (a number, or a string holding
//! one), so a number out of the field's range (`weight: 4294967297`), negative for an
//! unsigned field or with a fraction fails with serde's `data did not match any variant of
//! untagged enum Content`, pointing at the enclosing object in YAML and at no field in
//! JSON. When that happens, [`find`] walks the file again beside the proto schema (the
//! descriptor set compiled into this crate) and names the field, the value and the range.
//! It runs only after such a failure: loading a good file costs nothing more.

use pbjson_types::field_descriptor_proto::{Label, Type};
use pbjson_types::{DescriptorProto, FieldDescriptorProto, FileDescriptorSet};
use prost::Message;
use serde_json::Value;

/// `PATH: VALUE is ...` for the first integer field whose value does not fit, if any, in
/// a config file read as a plain JSON value.
pub(crate) fn find(value: &Value) -> Option<String> {
    let set = FileDescriptorSet::decode(crate::FILE_DESCRIPTOR_SET).ok()?;
    let schema = Schema { set: &set };
    schema.walk(schema.message(".vane.config.v1.Config")?, value, "")
}

struct Schema<'a> {
    set: &'a FileDescriptorSet,
}

impl<'a> Schema<'a> {
    /// The message of a fully qualified name (`.vane.config.v1.Route.Forward`).
    fn message(&self, full_name: &str) -> Option<&'a DescriptorProto> {
        self.set.file.iter().find_map(|file| {
            let package = format!(".{}", file.package.as_deref().unwrap_or(""));
            let rest = full_name.strip_prefix(&package)?.strip_prefix('.')?;
            let mut parts = rest.split('.');
            let first = parts.next()?;
            let mut message = file.message_type.iter().find(|m| m.name.as_deref() == Some(first))?;
            for part in parts {
                message = message.nested_type.iter().find(|m| m.name.as_deref() == Some(part))?;
            }
            Some(message)
        })
    }

    fn walk(&self, message: &'a DescriptorProto, value: &Value, path: &str) -> Option<String> {
        let Value::Object(fields) = value else { return None };
        for (key, value) in fields {
            let Some(field) = message
                .field
                .iter()
                .find(|f| f.name.as_deref() == Some(key.as_str()) || f.json_name.as_deref() == Some(key.as_str()))
            else {
                continue;
            };
            let path = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
            let repeated = field.label == Some(Label::Repeated as i32);
            let found = match value {
                Value::Array(items) if repeated => {
                    items.iter().enumerate().find_map(|(i, item)| self.field(field, item, &format!("{path}[{i}]")))
                }
                item => self.field(field, item, &path),
            };
            if found.is_some() {
                return found;
            }
        }
        None
    }

    fn field(&self, field: &'a FieldDescriptorProto, value: &Value, path: &str) -> Option<String> {
        let kind = field.r#type.and_then(|t| Type::try_from(t).ok())?;
        if kind == Type::Message {
            let name = field.type_name.as_deref()?;
            // Well-known types (durations, timestamps) are strings; map entries are skipped.
            let message = self.message(name)?;
            if message.options.as_ref().and_then(|o| o.map_entry) == Some(true) {
                return None;
            }
            return self.walk(message, value, path);
        }
        let (min, max, what): (i128, i128, &str) = match kind {
            Type::Int32 | Type::Sint32 | Type::Sfixed32 => {
                (i32::MIN.into(), i32::MAX.into(), "a 32-bit signed integer")
            }
            Type::Uint32 | Type::Fixed32 => (0, u32::MAX.into(), "a 32-bit unsigned integer"),
            Type::Int64 | Type::Sint64 | Type::Sfixed64 => {
                (i64::MIN.into(), i64::MAX.into(), "a 64-bit signed integer")
            }
            Type::Uint64 | Type::Fixed64 => (0, u64::MAX.into(), "a 64-bit unsigned integer"),
            _ => return None,
        };
        let shown = match value {
            Value::Number(n) => n.to_string(),
            Value::String(s) => s.clone(),
            _ => return Some(format!("{path}: expected {what}, found {}", kind_of(value))),
        };
        let Ok(n) = shown.trim().parse::<i128>() else {
            return Some(format!("{path}: {shown} is not a whole number ({what} is expected)"));
        };
        (n < min || n > max).then(|| format!("{path}: {shown} is out of range for {what} ({min} to {max})"))
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(text: &str) -> Option<String> {
        find(&serde_norway::from_str(text).unwrap())
    }

    #[test]
    fn an_out_of_range_weight_is_named_with_its_path_and_range() {
        let text = "clusters:\n  - name: c\n    endpoints:\n      - address: 127.0.0.1:1\n      - address: 127.0.0.1:2\n        weight: 4294967297\n";
        assert_eq!(
            yaml(text).unwrap(),
            "clusters[0].endpoints[1].weight: 4294967297 is out of range for a 32-bit unsigned integer (0 to 4294967295)"
        );
        let json = r#"{"clusters":[{"name":"c","endpoints":[{"address":"127.0.0.1:1","weight":-1}]}]}"#;
        assert!(
            find(&serde_json::from_str(json).unwrap())
                .unwrap()
                .starts_with("clusters[0].endpoints[0].weight: -1 is out of range")
        );
    }

    #[test]
    fn fractions_and_wrong_types_are_named_too() {
        let text = "routes:\n  - name: r\n    forward: { retry: { num_retries: 1.5 } }\n";
        assert_eq!(
            yaml(text).unwrap(),
            "routes[0].forward.retry.num_retries: 1.5 is not a whole number (a 32-bit unsigned integer is expected)"
        );
        let text = "clusters:\n  - name: c\n    endpoints: [{ address: '127.0.0.1:1', weight: [1] }]\n";
        assert!(yaml(text).unwrap().ends_with("expected a 32-bit unsigned integer, found a list"));
        assert_eq!(yaml("clusters:\n  - name: c\n"), None);
    }
}
