//! England's statutory attendance codes, from August 2024 (TARGETS.md). A trust maps a
//! visit's `absence_reason` to one of these in `codes.toml`; any other code is refused at
//! `config check`, and the withdrawn ones get a message saying so.

/// Every code on the current list.
pub const ATTENDANCE_CODES: &[&str] = &[
    // Present.
    "/", "\\", "L", // Attending a place other than the school.
    "K", "V", "P", "W", "B", "D", // Authorised absence.
    "C1", "M", "J1", "S", "X", "C2", "C", "T", "R", "I", "E",
    // Unable to attend because of unavoidable causes.
    "Q", "Y1", "Y2", "Y3", "Y4", "Y5", "Y6", "Y7", // Unauthorised absence.
    "G", "N", "O", "U", // Administrative.
    "Z", "#",
];

/// Codes withdrawn in August 2024.
pub const WITHDRAWN_CODES: &[&str] = &["H", "F", "J", "Y"];

/// Why a code may not be used, or `None` when it is on the list.
pub fn attendance_code_problem(code: &str) -> Option<String> {
    if ATTENDANCE_CODES.contains(&code) {
        None
    } else if WITHDRAWN_CODES.contains(&code) {
        Some(format!(
            "attendance code `{code}` was withdrawn in August 2024; use a code of the current list"
        ))
    } else {
        Some(format!(
            "`{code}` is not an attendance code of the statutory list (England, from August 2024)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_codes_pass_and_withdrawn_ones_are_named() {
        for c in ["/", "\\", "I", "C1", "Y7", "#", "U"] {
            assert_eq!(attendance_code_problem(c), None, "{c}");
        }
        for c in ["H", "F", "J", "Y"] {
            assert!(
                attendance_code_problem(c).unwrap().contains("withdrawn"),
                "{c}"
            );
        }
        for c in ["Y8", "i", "", "C3"] {
            assert!(
                attendance_code_problem(c)
                    .unwrap()
                    .contains("not an attendance code")
            );
        }
    }
}
