"""The UI's error wrapper: user errors, OS errors and bugs each become the right message."""
from __future__ import annotations

import errno
import inspect
import logging
import sqlite3

import gradio as gr
import pytest

from calibprompt.app.common import handler


def _raising(exc):
    @handler
    def fn(x, progress=gr.Progress()):
        raise exc

    return fn


def test_the_wrapper_keeps_the_signature_so_gradio_sees_progress():
    fn = _raising(ValueError("x"))
    assert "progress" in inspect.signature(fn).parameters


def test_a_user_error_is_shown_as_it_is():
    with pytest.raises(gr.Error, match="Choose 8 shots or fewer"):
        _raising(ValueError("Choose 8 shots or fewer."))(1)


def test_a_full_disk_becomes_a_plain_message(calibprompt_home):
    with pytest.raises(gr.Error) as info:
        _raising(OSError(errno.ENOSPC, "No space left on device", str(calibprompt_home / "runs.db")))(1)
    assert "full" in str(info.value) and "CALIBPROMPT_HOME" in str(info.value)


def test_a_locked_database_becomes_a_plain_message():
    with pytest.raises(gr.Error) as info:
        _raising(sqlite3.OperationalError("database is locked"))(1)
    text = str(info.value).lower()
    assert ("locked" in text or "busy" in text) and "database" in text and "error id" not in text


def test_a_bug_gets_an_error_id_that_is_in_the_log(caplog):
    with caplog.at_level(logging.ERROR):
        with pytest.raises(gr.Error) as info:
            _raising(KeyError("internal"))(1)
    message = str(info.value)
    assert "error id" in message and "internal" not in message
    error_id = message.split("error id ")[1][:8]
    assert any(error_id in record.getMessage() for record in caplog.records)
    assert any(record.exc_info for record in caplog.records)
