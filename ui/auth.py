"""Sign-in for a hosted server, in the mode the server's secrets choose (docs/hosting.md):

- `[auth]` (OpenID Connect, a university's single sign-on): Streamlit's st.login / st.user; the
  identity is the provider's verified e-mail (else its subject id). `[cvae] lecturers = [...]` lists
  the lecturers' e-mails. Streamlit keeps the sign-in in its own signed cookie.
- `[cvae] sign_in = "accounts"`: per-person accounts that the lecturer makes with `cvae class add`
  (cvae.classroom): one-time passwords, then each person's own, stored as Argon2id hashes, with a
  lock-out that doubles after repeated wrong passwords. The sign-in is kept in a cookie holding a
  token the server signs (cvae.classroom.issue_token), checked on every script run.
- neither: no sign-in (a laptop). Every run is everyone's.

Who may do what is cvae.classroom's, checked again by every run operation in the library; hiding a
button here is a courtesy, not the check.
"""

from __future__ import annotations

import streamlit as st

from cvae import classroom
from cvae.classroom import User
from cvae.errors import CVAEError
from ui.runs import VIEWER, Run, runs_root

COOKIE = "cvae_session"
TOKEN = "cvae_token"  # session key: the signed token of an accounts sign-in
CHANGE = "cvae_change_password"  # session key: a user who signed in with a one-time password
CLEAR = "cvae_clear_cookie"  # session key: the browser's cookie is to be removed (after signing out)


def _secret(*keys: str) -> object:
    """A value from st.secrets, or None (no secrets file at all is the common, signed-out case)."""
    try:
        value: object = st.secrets
        for key in keys:
            value = value[key]  # type: ignore[index]
    except (KeyError, FileNotFoundError, TypeError):  # StreamlitSecretNotFoundError is a FileNotFoundError
        return None
    return value


def mode() -> str | None:
    """'oidc', 'accounts', 'retired' (an old shared class password: refused) or None (sign-in off)."""
    if _secret("auth") is not None:
        return "oidc"
    if _secret("cvae", "sign_in") == "accounts":
        return "accounts"
    if _secret("cvae", "password") is not None:
        return "retired"
    return None


def current_user() -> User | None:
    """The signed-in user (set by `gate`); None when sign-in is off."""
    return st.session_state.get(VIEWER)


def can_manage(run: Run) -> bool:
    """May the current user stop, resume, delete or rename `run`? Always, when sign-in is off."""
    return classroom.may_manage(current_user(), run.owner)


def owner_note(run: Run) -> str:
    if run.owner:
        return f"Started by **{run.owner}**: only they or a lecturer can stop, resume, rename or delete it."
    return "Started outside the app (or before sign-in was on): only a lecturer can change it."


def _oidc_user() -> User | None:
    if not st.user.is_logged_in:
        return None
    email, verified = st.user.get("email"), st.user.get("email_verified")
    # An unverified e-mail is only a claim the user typed at the provider: fall back to the subject id.
    name = str(email) if email and verified is not False else str(st.user.get("sub") or "")
    if not name:
        return None
    lecturers = _secret("cvae", "lecturers")
    lecturer = isinstance(lecturers, (list, tuple)) and name in [str(x) for x in lecturers]
    return User(name, "lecturer" if lecturer else "student")


def _accounts_user() -> User | None:
    """The user of this session's token, or of the browser's cookie; checked on every script run, so a
    sign-out elsewhere, a reset or a removed account ends it at once."""
    root = runs_root()
    for token in (st.session_state.get(TOKEN), st.context.cookies.get(COOKIE)):
        user = classroom.user_of_token(root, token)
        if user is not None:
            st.session_state[TOKEN] = token
            return user
    st.session_state.pop(TOKEN, None)
    return None


def _set_cookie(token: str | None) -> None:
    """Keep (or, with None, remove) the token in the browser. The token is signed by the server, so the
    browser can keep it but not forge one; Streamlit has no call that sets a cookie, hence the script."""
    value, age = (token, int(classroom.SESSION_HOURS * 3600)) if token else ("", 0)
    st.html(
        "<script>document.cookie = '" + COOKIE + "=" + value + "; Path=/; Max-Age=" + str(age) + "; SameSite=Strict'"
        " + (location.protocol === 'https:' ? '; Secure' : '');</script>",
        unsafe_allow_javascript=True,
    )  # fmt: skip


def gate() -> None:
    """Before anything is shown: sign in when sign-in is on (stops the script until then)."""
    kind = mode()
    if kind is None:
        st.session_state[VIEWER] = None
        return
    if kind == "retired":
        st.error("This server's secrets set a shared class password (`[cvae] password`), which lets anyone sign in "
                 "under any name, so the app no longer accepts it. The server's admin sets `[cvae] sign_in = "
                 '"accounts"` and makes accounts with `cvae class add` (docs/hosting.md).')  # fmt: skip
        st.stop()
    user = _oidc_user() if kind == "oidc" else _accounts_user()
    st.session_state[VIEWER] = user
    if user is not None:
        _signed_in(kind, user)
        return
    st.title(":material/lock: CVAE lab")
    if kind == "oidc":
        st.write("Sign in with your university account to use the lab.")
        if st.button("Sign in", key="sign_in", type="primary", icon=":material/login:"):
            st.login()
        st.stop()
    if st.session_state.pop(CLEAR, False):
        _set_cookie(None)
    if st.session_state.get(CHANGE) is not None:
        _choose_password(st.session_state[CHANGE])
    else:
        _password_form()
    st.stop()


def _signed_in(kind: str, user: User) -> None:
    with st.sidebar:
        role = " (lecturer)" if user.lecturer else ""
        st.caption(f":material/person: Signed in as **{user.name}**{role}")
        if kind == "accounts":
            _set_cookie(st.session_state[TOKEN])
        if user.lecturer:
            _class_settings(user)
        if st.button("Sign out", key="sign_out", icon=":material/logout:",
                     help="Signs you out in every browser where you are signed in."):  # fmt: skip
            st.session_state[VIEWER] = None
            if kind == "oidc":
                st.logout()
            else:
                classroom.end_sessions(runs_root(), user.name)
                st.session_state.pop(TOKEN, None)
                st.session_state[CLEAR] = True
            st.rerun()


def _password_form() -> None:
    with st.form("sign_in_form"):
        st.write("This lab server is shared by a class. Sign in with the name and password your lecturer gave you.")
        name = st.text_input("Name", key="sign_in_name", max_chars=40)
        password = st.text_input("Password", type="password", key="sign_in_password", max_chars=200)
        submitted = st.form_submit_button("Sign in", type="primary", icon=":material/login:")
    if not submitted:
        return
    try:
        user, one_time = classroom.sign_in(runs_root(), name, password)
    except CVAEError as err:
        st.error(f"{str(err)[:1].upper()}{str(err)[1:]}.")
        return
    if one_time:
        st.session_state[CHANGE] = user
    else:
        st.session_state[TOKEN] = classroom.issue_token(runs_root(), user)
    st.rerun()


def _choose_password(user: User) -> None:
    with st.form("new_password_form"):
        st.write(f"Welcome, **{user.name}**. You signed in with a one-time password: choose your own "
                 f"(at least {classroom.MIN_PASSWORD} characters).")  # fmt: skip
        first = st.text_input("New password", type="password", key="new_password", max_chars=200)
        again = st.text_input("New password again", type="password", key="new_password_again", max_chars=200)
        submitted = st.form_submit_button("Save and sign in", type="primary", icon=":material/key:")
    if not submitted:
        return
    if first != again:
        st.error("The two passwords differ.")
        return
    try:
        classroom.set_password(runs_root(), user, first)
        st.session_state[TOKEN] = classroom.issue_token(runs_root(), user)
    except CVAEError as err:
        st.error(f"{str(err)[:1].upper()}{str(err)[1:]}.")
        return
    st.session_state.pop(CHANGE, None)
    st.rerun()


def _class_settings(user: User) -> None:
    """The lecturer's choices for the class: what students see and how many runs each may have going."""
    root = runs_root()
    settings = classroom.read_settings(root)
    with st.popover("Class settings", icon=":material/school:", width="stretch"):
        visible = st.toggle("Students see classmates' runs", settings["classmates_visible"], key="class_visible",
                            help="Off: a student sees their own runs and the ones you pin. On: every run.")  # fmt: skip
        limit = st.number_input("Runs each student may have queued or training", 0, classroom.MAX_ACTIVE_LIMIT,
                                settings["max_active"], key="class_max_active")  # fmt: skip
        if (visible, limit) != (settings["classmates_visible"], settings["max_active"]):
            try:
                classroom.update_settings(root, user, classmates_visible=visible, max_active=int(limit))
            except (CVAEError, OSError) as err:
                st.error(f"Could not save the class settings: {err}")
        st.caption(f"Pinned for the class: {len(settings['pinned'])} run(s). Pin a run from its Train page.")


def pin_control(run: Run) -> None:
    """A lecturer's Pin / Unpin for the class, on a run's Train page."""
    user = current_user()
    if user is None or not user.lecturer:
        return
    root = runs_root()
    pinned = run.id in classroom.read_settings(root)["pinned"]
    label, icon = ("Unpin", ":material/keep_off:") if pinned else ("Pin for the class", ":material/keep:")
    if st.button(label, icon=icon, key="pin", help="Every student sees a pinned run in their run picker."):
        try:
            classroom.set_pinned(root, user, run.id, not pinned)
        except (CVAEError, OSError) as err:
            st.error(f"Could not pin it: {err}")
            return
        st.rerun()
