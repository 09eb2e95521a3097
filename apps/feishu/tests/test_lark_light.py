"""The client layer loads a small part of lark-oapi (apps.feishu.client.lark_light), and still works.

Run in a fresh interpreter: in the test process another module may have imported the whole SDK first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]

CODE = """
import django, json, sys; django.setup()
from django.core.management import call_command; call_command('migrate', verbosity=0)
from apps.feishu.client import FeishuClient
from tests.factories import BotFactory
loaded = lambda: sum(1 for m in sys.modules if m.startswith('lark_oapi'))
client = FeishuClient.for_bot(BotFactory(base_url=BASE_URL))
reply = client.reply_message(message_id='om_in', msg_type='text', content={'text': 'hi'}, uuid='light-1')
bot = client.bot_info()  # a call shaped by lark-oapi's builders, with its tenant token
light = loaded()
from apps.feishu.client.lark_light import lark_full
lark = lark_full()
print(json.dumps({'light': light, 'full': loaded(), 'reply': reply, 'bot': bot.get('open_id', ''),
                  'ws_client': hasattr(lark.ws, 'Client'), 'client': hasattr(lark, 'Client')}))
"""


@pytest.mark.slow
def test_the_client_works_on_a_small_part_of_lark_oapi_and_the_whole_sdk_still_loads(fake_feishu, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env |= {"DJANGO_SETTINGS_MODULE": "omniagent.settings", "OMNIAGENT_DATA_DIR": str(tmp_path), "LOG_LEVEL": "error"}
    code = f"BASE_URL = {fake_feishu.base_url!r}\n" + CODE

    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)

    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["reply"] == fake_feishu.messages[0]["message_id"]
    assert seen["bot"]
    # ~1,000 modules instead of the ~10,600 `import lark_oapi` loads (and ~120 MB less per process).
    assert seen["light"] < 2500 < seen["full"], seen
    assert seen["ws_client"] and seen["client"]
