//! MCP tool arguments as policy input: a bundle's `mcp/<server>.json` (the
//! server's `tools/list` result) declares the arguments of
//! `mcp__<server>__<tool>` as optional fields of `context.input`, with the
//! Cedar type derived from each tool's JSON Schema `inputSchema`.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::bundle::FieldType;

/// Where a bundle keeps MCP servers' tool lists.
pub(crate) const MCP_DIR: &str = "mcp/";

/// One tool argument as Cedar can see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct McpField {
    pub(crate) name: String,
    pub(crate) ty: FieldType,
    /// `mcp__<server>__<tool>`, for messages.
    pub(crate) tool: String,
}

/// What one `mcp/<server>.json` declares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct McpServer {
    pub(crate) fields: Vec<McpField>,
    /// Arguments Cedar has no type for (objects, floats, mixed arrays), as
    /// `mcp__<server>__<tool>.<arg>`.
    pub(crate) unrepresentable: Vec<String>,
}

/// The server name of a bundle path `mcp/<server>.json`.
pub(crate) fn server_of(path: &str) -> Option<&str> {
    path.strip_prefix(MCP_DIR)?
        .strip_suffix(".json")
        .filter(|s| !s.is_empty() && !s.contains('/'))
}

/// Parses a `tools/list` result: `{"tools": [...]}`, or a whole JSON-RPC
/// response `{"result": {"tools": [...]}}`.
pub(crate) fn parse(server: &str, text: &str) -> Result<McpServer, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let tools = v
        .get("tools")
        .or_else(|| v.get("result").and_then(|r| r.get("tools")))
        .and_then(Value::as_array)
        .ok_or("expected a tools/list result: {\"tools\": [{\"name\", \"inputSchema\"}, ...]}")?;
    let mut out = McpServer::default();
    for tool in tools {
        let name = tool
            .get("name")
            .and_then(Value::as_str)
            .ok_or("a tool has no `name`")?;
        let full = format!("mcp__{server}__{name}");
        let Some(props) = tool
            .get("inputSchema")
            .and_then(|s| s.get("properties"))
            .and_then(Value::as_object)
        else {
            continue;
        };
        for (arg, spec) in props {
            match json_schema_type(spec) {
                Some(ty) => out.fields.push(McpField {
                    name: arg.clone(),
                    ty,
                    tool: full.clone(),
                }),
                None => out.unrepresentable.push(format!("{full}.{arg}")),
            }
        }
    }
    Ok(out)
}

/// The Cedar type of a JSON Schema property, when Cedar has one.
fn json_schema_type(spec: &Value) -> Option<FieldType> {
    let ty = match spec.get("type") {
        Some(Value::String(t)) => Some(t.as_str()),
        // ["string", "null"]: the one non-null type.
        Some(Value::Array(types)) => {
            let mut non_null = types
                .iter()
                .filter_map(Value::as_str)
                .filter(|t| *t != "null");
            match (non_null.next(), non_null.next()) {
                (Some(t), None) => Some(t),
                _ => return None,
            }
        }
        None if spec
            .get("enum")
            .and_then(Value::as_array)
            .is_some_and(|e| !e.is_empty() && e.iter().all(Value::is_string)) =>
        {
            Some("string")
        }
        _ => None,
    }?;
    match ty {
        "string" => Some(FieldType::String),
        "integer" => Some(FieldType::Long),
        "boolean" => Some(FieldType::Bool),
        "array" => match spec.get("items").and_then(json_schema_type) {
            Some(FieldType::String) => Some(FieldType::SetOfString),
            _ => None,
        },
        _ => None,
    }
}

/// The Cedar schema spelling of a field type.
pub(crate) fn cedar_type(ty: FieldType) -> &'static str {
    match ty {
        FieldType::String => "String",
        FieldType::Long => "Long",
        FieldType::Bool => "Bool",
        FieldType::SetOfString => "Set<String>",
    }
}

fn json_type(ty: FieldType) -> Value {
    let prim = |t: &str| serde_json::json!({"type": t});
    let mut v = match ty {
        FieldType::String => prim("String"),
        FieldType::Long => prim("Long"),
        FieldType::Bool => prim("Boolean"),
        FieldType::SetOfString => {
            serde_json::json!({"type": "Set", "element": {"type": "String"}})
        }
    };
    v["required"] = Value::Bool(false);
    v
}

/// Adds every server's argument fields to `ToolInput` in a schema JSON
/// fragment. A field already declared with another type, or declared by
/// two tools with different types, is an error: Cedar gives a record field
/// one type, and leaving one tool's values out would make a policy on them
/// silently dead.
pub(crate) fn extend_tool_input(
    fragment: &mut Value,
    namespace: &str,
    servers: &BTreeMap<String, (String, McpServer)>,
    declared: &[(String, FieldType)],
) -> Vec<(String, String)> {
    let mut errors = Vec::new();
    let mut added: BTreeMap<String, (FieldType, String)> = BTreeMap::new();
    for (file, server) in servers.values() {
        for f in &server.fields {
            if let Some((_, ty)) = declared.iter().find(|(n, _)| *n == f.name) {
                if *ty != f.ty {
                    errors.push((
                        file.clone(),
                        format!(
                            "{} argument `{}` is {}, but the schema declares ToolInput.{} as {}; \
                             Cedar gives a field one type (remove the argument from this file or \
                             change the schema)",
                            f.tool,
                            f.name,
                            cedar_type(f.ty),
                            f.name,
                            cedar_type(*ty)
                        ),
                    ));
                }
                continue;
            }
            match added.get(&f.name) {
                Some((ty, other)) if *ty != f.ty => errors.push((
                    file.clone(),
                    format!(
                        "{} argument `{}` is {}, but {other} declares it as {}; Cedar gives a \
                         field one type (remove the argument from one of the files)",
                        f.tool,
                        f.name,
                        cedar_type(f.ty),
                        cedar_type(*ty)
                    ),
                )),
                Some(_) => {}
                None => {
                    added.insert(f.name.clone(), (f.ty, f.tool.clone()));
                }
            }
        }
    }
    if added.is_empty() {
        return errors;
    }
    let attrs = fragment
        .get_mut(namespace)
        .and_then(|ns| ns.get_mut("commonTypes"))
        .and_then(|ct| ct.get_mut("ToolInput"))
        .and_then(|t| t.get_mut("attributes"))
        .and_then(Value::as_object_mut);
    match attrs {
        Some(attrs) => {
            for (name, (ty, _)) in added {
                attrs.insert(name, json_type(ty));
            }
        }
        None => {
            for (file, _) in servers.values() {
                errors.push((
                    file.clone(),
                    format!(
                        "the schema declares no record type {namespace}::ToolInput for MCP arguments"
                    ),
                ));
            }
        }
    }
    errors
}

/// `gatehouse schema --mcp FILE`: the declarations a tools list adds, as
/// Cedar schema text to read (they are added to `ToolInput` automatically
/// when the file is in the bundle's `mcp/` directory).
pub fn mcp_declarations(server: &str, tools_json: &str) -> Result<String, String> {
    let parsed = parse(server, tools_json)?;
    let mut by_field: BTreeMap<&str, (FieldType, Vec<&str>)> = BTreeMap::new();
    let mut conflicts = Vec::new();
    for f in &parsed.fields {
        let entry = by_field.entry(&f.name).or_insert((f.ty, Vec::new()));
        if entry.0 == f.ty {
            entry.1.push(&f.tool);
        } else {
            conflicts.push(format!(
                "// conflict: `{}` is {} in {} but {} elsewhere",
                f.name,
                cedar_type(f.ty),
                f.tool,
                cedar_type(entry.0)
            ));
        }
    }
    let mut out = format!(
        "// MCP server `{server}`: arguments of its tools, added to Gatehouse::ToolInput\n\
         // when this file is the bundle's mcp/{server}.json. Test them as\n\
         // `context.input has <arg> && context.input.<arg> ...` with\n\
         // `resource.server == \"{server}\"` or `resource == Gatehouse::Tool::\"mcp__{server}__<tool>\"`.\n\
         type ToolInput = {{\n"
    );
    for (name, (ty, tools)) in &by_field {
        out.push_str(&format!(
            "  {}?: {}, // {}\n",
            quote_attr(name),
            cedar_type(*ty),
            tools.join(", ")
        ));
    }
    out.push_str("};\n");
    for c in conflicts {
        out.push_str(&c);
        out.push('\n');
    }
    for u in &parsed.unrepresentable {
        out.push_str(&format!("// not representable in Cedar, left out: {u}\n"));
    }
    Ok(out)
}

fn quote_attr(name: &str) -> String {
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if plain {
        name.to_owned()
    } else {
        format!("{name:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GITHUB: &str = r#"{"tools":[
      {"name":"create_issue","inputSchema":{"type":"object","properties":{
        "owner":{"type":"string"},"repo":{"type":"string"},"title":{"type":"string"},
        "labels":{"type":"array","items":{"type":"string"}},"milestone":{"type":["integer","null"]},
        "draft":{"type":"boolean"},"meta":{"type":"object"},"weight":{"type":"number"},
        "state":{"enum":["open","closed"]}}}},
      {"name":"list_issues","inputSchema":{"type":"object","properties":{"owner":{"type":"string"}}}}
    ]}"#;

    #[test]
    fn derives_cedar_types_from_input_schemas() {
        let s = parse("github", GITHUB).unwrap();
        let find = |n: &str| s.fields.iter().find(|f| f.name == n).map(|f| f.ty);
        assert_eq!(find("title"), Some(FieldType::String));
        assert_eq!(find("labels"), Some(FieldType::SetOfString));
        assert_eq!(find("milestone"), Some(FieldType::Long));
        assert_eq!(find("draft"), Some(FieldType::Bool));
        assert_eq!(find("state"), Some(FieldType::String));
        assert_eq!(find("meta"), None);
        assert!(
            s.unrepresentable
                .contains(&"mcp__github__create_issue.weight".to_owned())
        );
        let text = mcp_declarations("github", GITHUB).unwrap();
        assert!(
            text.contains("title?: String, // mcp__github__create_issue"),
            "{text}"
        );
        assert!(
            text.contains("owner?: String, // mcp__github__create_issue, mcp__github__list_issues")
        );
        assert!(parse("x", "{}").is_err());
        assert!(parse("x", r#"{"result":{"tools":[]}}"#).is_ok());
        assert_eq!(server_of("mcp/github.json"), Some("github"));
        assert_eq!(server_of("mcp/a/b.json"), None);
        assert_eq!(server_of("entities.json"), None);
    }
}
