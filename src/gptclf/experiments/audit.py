"""Observations on the test texts the leading rows miss, read by hand against the source file.

An observation, never a relabelling: the labels stay as the SMS Spam Collection gives them. Keyed
by the exact text; `line` is its line in `SMSSpamCollection` (1-based), where it can be checked.
The report shows the observation beside each text that most leading runs get wrong.
"""

from __future__ import annotations

OBSERVATIONS: dict[str, tuple[int, str]] = {
    "Filthy stories and GIRLS waiting for your": (
        956,
        "cut off in the source file: the line ends mid-sentence ('waiting for your'); what is "
        "left has no number, link, price or call to act",
    ),
    "ROMCAPspam Everyone around should be responding well to your presence since you are so "
    "warm and outgoing. You are bringing in a real breath of sunshine.": (
        2824,
        "a horoscope-style message (a subscription service's content); apart from the "
        "'ROMCAPspam' tag it reads as a friendly personal message",
    ),
    "Hello. We need some posh birds and chaps to user trial prods for champneys. Can i put you "
    "down? I need your address and dob asap. Ta r": (
        870,
        "a solicitation for address and date of birth, written informally like a personal "
        "message, with no number or link; the label looks right, the text carries little sign",
    ),
    "Money i have won wining number 946 wot do i do next": (
        4515,
        "reads as a person asking what to do about a prize, in SMS spelling, with no number to "
        "call or link: the spam label looks doubtful (perhaps a reply to a spam message)",
    ),
}


def observation(text: str) -> str:
    """The observation on `text` with its source line, or "—" where none was made."""
    found = OBSERVATIONS.get(text)
    return f"{found[1]} (line {found[0]})" if found else "—"
