"""Optional sign-in for a hosted server. Off unless the server's secrets turn it on.

- `[auth]` in secrets.toml (OpenID Connect): Streamlit's st.login / st.user.
- `[cvae] password = "..."`: one shared class password plus a display name.

When on, each run records its owner (owner.json) and a user may stop, resume
or delete only their own runs; everyone can look at every run. A shared
password cannot tell people apart, so the display name is trusted: it keeps
classmates from stopping each other's runs by mistake, not a determined attacker.
"""

from __future__ import annotations

import hmac
import re
import time

import streamlit as st

from ui.runs import Run

USER = "cvae_user"  # session key: the signed-in user's name
NAME = re.compile(r"^[\w .@'-]{1,40}$")


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
    """'oidc', 'password' or None (sign-in off)."""
    if _secret("auth") is not None:
        return "oidc"
    password = _secret("cvae", "password")
    return "password" if isinstance(password, str) and password else None


def current_user() -> str | None:
    """The signed-in user's name; None when sign-in is off."""
    if mode() == "oidc":
        if not st.user.is_logged_in:
            return None
        return str(st.user.get("email") or st.user.get("name") or st.user.get("sub"))
    return st.session_state.get(USER)


def can_manage(run: Run) -> bool:
    """May the current user stop, resume or delete `run`? Always, when sign-in is off."""
    return mode() is None or (run.owner is not None and run.owner == current_user())


def owner_note(run: Run) -> str:
    if run.owner:
        return f"Started by **{run.owner}**: only they can stop, resume or delete it."
    return "Started outside the app (or before sign-in was on): only the server's admin can change it."


def gate() -> None:
    """Before anything is shown: sign in when sign-in is on (stops the script until then)."""
    kind = mode()
    if kind is None:
        return
    if current_user():
        with st.sidebar:
            st.caption(f":material/person: Signed in as **{current_user()}**")
            if st.button("Sign out", key="sign_out", icon=":material/logout:"):
                st.session_state.pop(USER, None)
                if kind == "oidc":
                    st.logout()
                st.rerun()
        return
    st.title(":material/lock: CVAE lab")
    if kind == "oidc":
        st.write("Sign in to use the lab.")
        if st.button("Sign in", key="sign_in", type="primary", icon=":material/login:"):
            st.login()
        st.stop()
    with st.form("sign_in_form"):
        st.write("This lab server is shared by a class. Sign in with the class password and your name; "
                 "your name marks the runs you start.")  # fmt: skip
        name = st.text_input("Your name", key="sign_in_name", max_chars=40)
        password = st.text_input("Class password", type="password", key="sign_in_password", max_chars=200)
        submitted = st.form_submit_button("Sign in", type="primary", icon=":material/login:")
    if submitted:
        expected = str(_secret("cvae", "password"))
        if not hmac.compare_digest(password.encode(), expected.encode()):
            time.sleep(1.0)  # slows down guessing
            st.error("Wrong password.")
        elif not NAME.match(name.strip()):
            st.error("Type your name: 1 to 40 letters, digits, spaces or . @ ' -")
        else:
            st.session_state[USER] = name.strip()
            st.rerun()
    st.stop()
