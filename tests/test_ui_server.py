"""Serving: localhost unless asked; on the network only with a password."""

import pytest

from traintrain.errors import UserError
from traintrain.ui.server import ServeOptions, credentials


def test_localhost_needs_no_password():
    assert credentials(ServeOptions()) == []


def test_listening_needs_a_password(tmp_path):
    with pytest.raises(UserError) as caught:
        credentials(ServeOptions(listen=True))
    assert caught.value.field == "listen"
    assert credentials(ServeOptions(listen=True, auth="ann:secret")) == [("ann", "secret")]
    users = tmp_path / "users"
    users.write_text("# who may train\nann:one\nbob:two:with colon\n")
    assert credentials(ServeOptions(listen=True, auth_file=users)) == [("ann", "one"), ("bob", "two:with colon")]


@pytest.mark.parametrize("text", ["nobody", ":pw", "user:"])
def test_a_bad_user_password_pair_is_refused(text):
    with pytest.raises(UserError, match="is not user:password"):
        credentials(ServeOptions(auth=text))
