//! The AppArmor profile of a box, rendered as text.
//!
//! One profile per box, named `orchestratord-box-<login>`, made from the template
//! `apparmor/orchestratord-box` by replacing its single placeholder `@{BOX_NAME}` with the
//! user's login. The substitution is textual and safe because a [`UserName`] is
//! `[a-z][a-z0-9_-]{0,11}`: no whitespace, braces, commas, quotes, slashes or newlines, so
//! a login can neither end the profile name nor add a rule. Loading the text into the
//! kernel and switching a process to it happen in `orchestratord::runtime::apparmor`
//! (see docs/apparmor.md).

use crate::names::UserName;

/// The profile template, compiled into the binary so the daemon never loads a template
/// someone edited on the host after installation.
pub const TEMPLATE: &str = include_str!("../../apparmor/orchestratord-box");

/// The only placeholder of [`TEMPLATE`]. Other `@{...}` in the template (such as `@{PROC}`)
/// are AppArmor's own variables and stay as they are.
pub const PLACEHOLDER: &str = "@{BOX_NAME}";

/// Prefix of every box profile name; what follows is the login.
pub const PROFILE_PREFIX: &str = "orchestratord-box-";

/// The name of `user`'s box profile, as the kernel lists it: `orchestratord-box-<login>`.
pub fn profile_name(user: &UserName) -> String {
    format!("{PROFILE_PREFIX}{user}")
}

/// The profile text of `user`'s box, ready for `apparmor_parser`.
pub fn render(user: &UserName) -> String {
    let text = TEMPLATE.replace(PLACEHOLDER, user.as_str());
    // Cannot fail for a valid UserName (it holds no '@' or '{'); a leftover placeholder would
    // load a profile whose name is not the box's, so refuse loudly rather than load it.
    assert!(
        !text.contains(PLACEHOLDER),
        "placeholder {PLACEHOLDER} left in the rendered AppArmor profile"
    );
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(s: &str) -> UserName {
        s.parse().unwrap()
    }

    #[test]
    fn the_template_names_its_profile_with_the_placeholder() {
        assert!(TEMPLATE.contains(&format!("profile {PROFILE_PREFIX}{PLACEHOLDER} ")));
    }

    #[test]
    fn the_profile_name_is_the_prefix_and_the_login() {
        assert_eq!(profile_name(&user("alice")), "orchestratord-box-alice");
        assert_eq!(profile_name(&user("b0b_x-1")), "orchestratord-box-b0b_x-1");
    }

    #[test]
    fn a_rendered_profile_declares_the_boxs_profile_and_has_no_placeholder_left() {
        for login in ["alice", "b", "dev-1", "x_y", "abcdefghijkl"] {
            let u = user(login);
            let text = render(&u);
            let name = profile_name(&u);
            assert!(
                text.contains(&format!("profile {name} flags=")),
                "{login}: profile line missing"
            );
            // Signals and ptrace stay inside the box's own profile.
            assert!(
                text.contains(&format!("peer={name},")),
                "{login}: peer rules"
            );
            assert!(!text.contains(PLACEHOLDER), "{login}: placeholder left");
            assert!(!text.contains("@{BOX_"), "{login}: placeholder left");
        }
    }

    #[test]
    fn rendering_keeps_apparmors_own_variables() {
        assert!(render(&user("alice")).contains("@{PROC}/sys/** w,"));
    }

    #[test]
    fn rendering_changes_nothing_but_the_placeholder() {
        let text = render(&user("alice"));
        assert_eq!(text.lines().count(), TEMPLATE.lines().count());
        assert_eq!(text, TEMPLATE.replace(PLACEHOLDER, "alice"));
    }

    #[test]
    fn a_login_that_could_change_the_profiles_structure_cannot_be_constructed() {
        for hostile in [
            "a b",
            "a{",
            "a}",
            "a,",
            "a\nfile,",
            "alice}\nprofile",
            "a/b",
            "../x",
            "a\"",
            "a#",
            "@{PROC}",
            "a\tb",
            "a\0",
            "a:b",
            "A",
            "",
        ] {
            assert!(
                hostile.parse::<UserName>().is_err(),
                "{hostile:?} was accepted as a login"
            );
        }
    }
}
