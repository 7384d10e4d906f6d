//! PostgreSQL's text → BYTEA conversion. Arrow casts text to binary byte for byte;
//! PostgreSQL reads text as bytea input (`'\x0102ff'` is three bytes). Plans are
//! rewritten so that every cast from text to binary goes through [`ByteaIn`].

use std::sync::Arc;

use datafusion::arrow::array::{Array, StringArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DFSchema, Result as DfResult};
use datafusion::logical_expr::ExprSchemable;
use datafusion::logical_expr::{
    ColumnarValue, Expr, LogicalPlan, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};
use quarry_common::SqlState;

use crate::error::{Error, to_engine};

/// `pg_bytea_in(text) -> bytea`: PostgreSQL's bytea input format.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct ByteaIn {
    signature: Signature,
}

impl ByteaIn {
    /// The function as a UDF.
    pub fn udf() -> Arc<ScalarUDF> {
        Arc::new(ScalarUDF::from(ByteaIn {
            signature: Signature::exact(vec![DataType::Utf8], Volatility::Immutable),
        }))
    }
}

impl ScalarUDFImpl for ByteaIn {
    fn name(&self) -> &str {
        "pg_bytea_in"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Binary)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let text = arrays[0]
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| {
                datafusion::error::DataFusionError::Internal("pg_bytea_in takes text".to_owned())
            })?;
        let decoded = crate::copy::decode_bytea(text, |row| Error::User {
            state: SqlState::INVALID_TEXT_REPRESENTATION,
            message: format!(
                "invalid input syntax for type bytea: \"{}\"",
                text.value(row)
            ),
            detail: None,
        })
        .map_err(to_engine)?;
        if decoded.len() == 1
            && args.number_rows == 1
            && matches!(args.args[0], ColumnarValue::Scalar(_))
        {
            return Ok(ColumnarValue::Scalar(
                datafusion::common::ScalarValue::try_from_array(&decoded, 0)?,
            ));
        }
        Ok(ColumnarValue::Array(decoded))
    }
}

/// Replaces casts from text to binary in `plan` with [`ByteaIn`] calls.
///
/// # Errors
/// If the plan cannot be rebuilt (a bug).
pub fn rewrite_text_to_bytea_casts(plan: LogicalPlan) -> DfResult<LogicalPlan> {
    let udf = ByteaIn::udf();
    plan.transform_up_with_subqueries(|node| {
        let mut schema = DFSchema::empty();
        for input in node.inputs() {
            schema.merge(input.schema());
        }
        node.map_expressions(|expr| {
            expr.transform_up(|e| match &e {
                Expr::Cast(cast) if *cast.field.data_type() == DataType::Binary => {
                    match cast.expr.get_type(&schema) {
                        Ok(DataType::Utf8) => {
                            Ok(Transformed::yes(udf.call(vec![*cast.expr.clone()])))
                        }
                        _ => Ok(Transformed::no(e)),
                    }
                }
                _ => Ok(Transformed::no(e)),
            })
        })
    })
    .map(|t| t.data)
}
