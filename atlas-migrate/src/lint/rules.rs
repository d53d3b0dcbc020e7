//! Rule ids: Atlas's own, and the squawk rules the lint runs.

use squawk_linter::Rule;

/// Atlas's own rule: destructive changes in an expand migration.
pub const EXPAND_PHASE_DESTRUCTIVE: &str = "expand-phase-destructive";
/// Atlas's own rule: a file the SQL parser could not read.
pub const SYNTAX_ERROR: &str = "syntax-error";
/// Atlas's own rule: an `UPDATE` of every row of an existing table.
pub const WHOLE_TABLE_UPDATE: &str = "whole-table-update";
/// Atlas's own rule: a `DELETE` of every row of an existing table.
pub const WHOLE_TABLE_DELETE: &str = "whole-table-delete";
/// Atlas's own rule: a file run outside a transaction because of one
/// statement that also holds others.
pub const NON_TRANSACTIONAL_MIXED: &str = "non-transactional-mixed";
/// Atlas's own rule: a new enum value used in the transaction that added it.
pub const ENUM_VALUE_USED_IN_TRANSACTION: &str = "enum-value-used-in-transaction";

/// Atlas's rule ids, in the order of the table above.
pub(crate) const ATLAS_RULES: &[&str] = &[
    EXPAND_PHASE_DESTRUCTIVE,
    SYNTAX_ERROR,
    WHOLE_TABLE_UPDATE,
    WHOLE_TABLE_DELETE,
    NON_TRANSACTIONAL_MIXED,
    ENUM_VALUE_USED_IN_TRANSACTION,
];

pub(crate) fn is_atlas_rule(rule: &str) -> bool {
    ATLAS_RULES.contains(&rule)
}

pub(crate) fn squawk_rules() -> Vec<Rule> {
    // Every rule name squawk 2.68 knows; unknown names are skipped so a
    // rule list drift cannot panic.
    const NAMES: &[&str] = &[
        "require-concurrent-index-creation",
        "require-concurrent-index-deletion",
        "constraint-missing-not-valid",
        "adding-field-with-default",
        "adding-foreign-key-constraint",
        "changing-column-type",
        "adding-not-nullable-field",
        "adding-serial-primary-key-field",
        "renaming-column",
        "renaming-table",
        "disallowed-unique-constraint",
        "ban-drop-database",
        "prefer-bigint-over-int",
        "prefer-bigint-over-smallint",
        "prefer-identity",
        "prefer-repack",
        "prefer-robust-stmts",
        "prefer-text-field",
        "prefer-timestamptz",
        "ban-char-field",
        "ban-drop-column",
        "ban-drop-table",
        "ban-drop-not-null",
        "transaction-nesting",
        "adding-required-field",
        "ban-concurrent-index-creation-in-transaction",
        "ban-create-domain-with-constraint",
        "ban-alter-domain-with-add-constraint",
        "ban-truncate-cascade",
        "ban-uncommitted-transaction",
        "require-enum-value-ordering",
        "require-table-schema",
        "identifier-too-long",
        "require-concurrent-partition-detach",
        "require-concurrent-reindex",
        "require-lock-timeout",
        "require-statement-timeout",
        "ban-duplicate-column-assignments",
        "ban-drop-view",
        "ban-drop-function",
        "ban-drop-type",
        "ban-drop-default",
        "ban-drop-trigger",
        "ban-drop-schema",
        "ban-drop-sequence",
        "ban-drop-domain",
        "ban-drop-constraint",
        "ban-drop-generated-expression",
        "renaming-object",
        "ban-set-schema",
        "ban-alter-identity",
        "ban-drop-extension",
        "ban-alter-generated-expression",
        "ban-drop-index",
        "ban-set-default",
        "ban-disable-trigger",
        "ban-replica-identity",
        "ban-drop-policy",
        "ban-revoke",
        "ban-replace-view-function",
        "ban-alter-policy-condition",
        "ban-alter-policy-roles",
        "ban-create-policy",
        "ban-alter-function-options",
        "ban-alter-view-options",
        "ban-alter-role-options",
        "ban-alter-database-options",
        "ban-alter-row-level-security",
        "ban-new-write-restriction",
        "ban-add-enum-value",
        "ban-add-composite-attribute",
        "ban-add-column",
        "ban-detach-inheritance",
        "ban-alter-sequence-values",
        "ban-alter-system-options",
        "ban-alter-extension",
    ];
    NAMES
        .iter()
        .filter_map(|n| Rule::try_from(*n).ok())
        .collect()
}
