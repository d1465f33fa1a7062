"""lmsleep.ks.samples: the KS prompts come from the memory's sentences, never from probes."""

import random
from types import SimpleNamespace

from lmsleep.ks.samples import (Sample, answers_elsewhere, build_samples, clean_question, cloze_spans,
                                drop_ungrounded, sentences, ungrounded_names)


def test_sentences_split_at_sentence_ends_and_drop_fragments():
    text = "Mira Kovalenko captains the Grey Heron. Go now. The crossing takes forty minutes! Yes."
    assert sentences(text) == ["Mira Kovalenko captains the Grey Heron.", "The crossing takes forty minutes!"]
    assert sentences("two words") == ["two words"]  # nothing long enough: the whole text


def test_clean_question_keeps_a_real_question_only():
    assert clean_question("Who captains the Grey Heron? Mira.\nMore") == "Who captains the Grey Heron?"
    assert clean_question("The Grey Heron sails at dawn.") is None
    assert clean_question("Why?") is None


class FakeTokenizer:
    def apply_chat_template(self, chat, tokenize, add_generation_prompt):
        return "|".join(m["content"] for m in chat)

    def __call__(self, text, add_special_tokens):
        return {"input_ids": [ord(c) for c in text]}

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids)

    def __len__(self):  # one token per ASCII character
        return 128


def scripted_writer(replies, calls=None):
    """A stand-in for sample_completions: the k-th sample ever drawn for a prompt is replies(prompt text)[k] (the
    last one repeated); `calls` collects each call's prompt texts."""
    drawn: dict[str, int] = {}

    def fake_sample(model, tokenizer, prompts, temperature, max_new_tokens, n=1, groups=None, stop_ids=()):
        assert n == 1
        texts = [tokenizer.decode(p) for p in prompts]
        if calls is not None:
            calls.append(texts)
        out = []
        for text in texts:
            script = replies(text)
            k = drawn.get(text, 0)
            drawn[text] = k + 1
            out.append([ord(c) for c in script[min(k, len(script) - 1)]])
        return out

    return fake_sample


def test_build_samples_spreads_prompts_over_sentences_and_never_reads_probes(monkeypatch):
    import lmsleep.ks.samples as samples

    asked = []
    # per prompt: a non-question first, then a question: the first real question of the tries is kept
    writer = scripted_writer(lambda text: ["The lamp.", "Who keeps the tower lamp?"])

    def fake_sample(model, tokenizer, prompts, temperature, max_new_tokens, n=1, groups=None, stop_ids=()):
        assert groups == (["m1"] * len(prompts))  # every question of a memory shares its prefix
        assert stop_ids == {ord("?")}  # a question's writing stops at its '?' (the only token holding one here)
        asked.extend(tokenizer.decode(p) for p in prompts)
        return writer(model, tokenizer, prompts, temperature, max_new_tokens, n, groups)

    monkeypatch.setattr(samples, "sample_completions", fake_sample)
    text = ("Brannoc keeps the lighthouse on Thallis. He paints the tower blue every spring. "
            "The lamp burns whale oil.")
    memory = {"id": "m1", "text": text, "probes": [{"question": "CANARY-Q?", "answer": "CANARY-A"}]}
    cfg = SimpleNamespace(ks_prompts_per_memory=6, ks_question_share=0.5, ks_cloze_share=0.0,
                          ks_temperature=0.7)
    built = build_samples(None, FakeTokenizer(), [memory], cfg, random.Random(0))
    continuations = [s for s in built if s.kind == "continuation"]
    questions = [s for s in built if s.kind == "question"]
    assert len(continuations) == 3 and len(questions) == 3
    starts = {s.prompt_text.split(": ", 1)[1].split()[0] for s in continuations}
    assert starts == {"Brannoc", "He", "The"}  # one per sentence
    assert all(sentence in " ".join(asked) for sentence in sentences(text))
    for s in built:
        seen = FakeTokenizer().decode(s.student_prompt + s.teacher_prompt) + s.prompt_text
        assert "CANARY" not in seen
        assert text not in FakeTokenizer().decode(s.student_prompt)  # the student never sees the memory
        assert text in FakeTokenizer().decode(s.teacher_prompt)


def test_teacher_completions_are_greedy_at_temperature_zero():
    import pytest
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from lmsleep.ks.rollout import sample_completions

    class Tok:
        pad_token_id, eos_token_id, eos_token = 0, 1, "</s>"

        def convert_tokens_to_ids(self, token):
            return None

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=30, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1, eos_token_id=1)).eval()
    prompts = [[2, 3, 4], [5, 6]]
    runs = [sample_completions(model, Tok(), prompts, 0.0, 6) for _ in range(2)]
    assert runs[0] == runs[1]
    with torch.no_grad():
        first = model(input_ids=torch.tensor([prompts[0]])).logits[0, -1].argmax().item()
    assert runs[0][0][0] == first
    with pytest.raises(ValueError, match="greedy"):
        sample_completions(model, Tok(), prompts, 0.0, 6, n=2)


def test_cloze_blanks_a_name_or_number_never_the_first_word():
    sentence = "Tobiah Quennell founded the Orrinwick Lanternmakers' Guild in 1873 on Pellham Row."
    found = [sentence[a:b] for a, b in cloze_spans(sentence)]
    assert found == ["Orrinwick Lanternmakers' Guild", "1873", "Pellham Row"]


def test_build_samples_mixes_questions_clozes_and_completions(monkeypatch):
    import lmsleep.ks.samples as samples

    monkeypatch.setattr(samples, "sample_completions", lambda model, tok, prompts, *a, n=1, **k:
                        [[ord(c) for c in "Who paints it?"] for _ in range(len(prompts) * n)])
    text = "Brannoc keeps the lighthouse on Thallis. He paints the tower blue every spring in April."
    cfg = SimpleNamespace(ks_prompts_per_memory=8, ks_question_share=0.5, ks_cloze_share=0.25, ks_temperature=0.7)
    built = build_samples(None, FakeTokenizer(), [{"id": "m1", "text": text}], cfg, random.Random(0))
    kinds = [s.kind for s in built]
    assert kinds.count("question") == 4 and kinds.count("cloze") == 2 and kinds.count("continuation") == 2
    for s in built:
        if s.kind == "cloze":
            blanked = s.prompt_text[len(samples.CLOZE):]
            before, after = blanked.split("___")
            assert before in text and after in text and before + after not in text
            assert before + s.asked + after in text  # what is asked: the blanked words
        elif s.kind == "question":
            assert s.asked in sentences(text)  # the sentence it was written about
        else:
            assert s.asked == ""


def test_anchor_prompts_are_general_requests_with_the_model_as_its_own_teacher(tmp_path):
    from lmsleep.ks.samples import BUNDLED_ANCHORS, anchor_samples, read_anchor_prompts

    bundled = [line for line in BUNDLED_ANCHORS.read_text().splitlines() if line and not line.startswith("#")]
    picked = read_anchor_prompts("", 5, seed=0)
    assert len(picked) == 5 and set(picked) <= set(bundled) and picked == read_anchor_prompts("", 5, seed=0)
    assert read_anchor_prompts("", 0, seed=0) == []
    own = tmp_path / "anchors.txt"
    own.write_text("# comment\nSay hello.\n\nName a colour.\n")
    assert sorted(read_anchor_prompts(own, 10, seed=1)) == ["Name a colour.", "Say hello."]
    [s] = anchor_samples(FakeTokenizer(), ["Say hello."])
    assert s.kind == "anchor" and s.source == "anchor" and s.student_prompt == s.teacher_prompt
    reference = (__import__("pathlib").Path(__file__).parents[1] / "data" / "reference.txt").read_text()
    assert not any(p.rstrip("?.") in reference for p in bundled)  # never the perplexity check's text


def test_more_phrasings_keep_distinct_questions_of_the_same_tries(monkeypatch):
    """ks_phrasings_per_question: up to k distinct real questions of the 3 sampled tries per sentence (repeats and
    non-questions skipped); 1 keeps only the first real question, as before."""
    import lmsleep.ks.samples as samples

    tries = ["The lamp.", "Who keeps the lamp?", "who keeps the lamp ?", "What does Brannoc keep?"]
    assert samples.distinct_questions(tries, 1) == ["Who keeps the lamp?"]
    assert samples.distinct_questions(tries, 3) == ["Who keeps the lamp?", "What does Brannoc keep?"]
    replies = ["Who keeps the lamp?", "Who keeps the lamp?", "Where is the lighthouse?"]
    text = "Brannoc keeps the lighthouse on Thallis. He paints the tower blue every spring in April."
    for keep, expected in ((1, 2), (2, 4), (3, 4)):  # 2 asked sentences; 2 distinct questions in their tries
        monkeypatch.setattr(samples, "sample_completions", scripted_writer(lambda prompt: replies))
        cfg = SimpleNamespace(ks_prompts_per_memory=2, ks_question_share=1.0, ks_cloze_share=0.0, ks_temperature=0.7,
                              ks_phrasings_per_question=keep)
        built = build_samples(None, FakeTokenizer(), [{"id": "m1", "text": text}], cfg, random.Random(0))
        assert [s.kind for s in built] == ["question"] * expected
        assert len({s.prompt_text for s in built}) == min(keep, 2)


def test_questions_are_asked_again_only_where_one_is_missing(monkeypatch):
    """write_questions samples in rounds: a sentence whose first try is a question is not asked again; one whose
    tries are not questions is asked again, up to QUESTION_TRIES samples in all, then given up (no question)."""
    from lmsleep.ks.samples import QUESTION_TRIES, write_questions

    scripts = {"lamp": ["Who keeps the lamp?"], "tower": ["Blue.", "Spring.", "What colour is the tower?"],
               "oil": ["Whale oil."]}
    calls = []
    writer = scripted_writer(lambda text: next(v for k, v in scripts.items() if f"the {k}" in text), calls)
    asks = [("m1", "text", f"Sentence about the {k}.") for k in scripts]
    import lmsleep.ks.samples as samples

    monkeypatch.setattr(samples, "sample_completions", writer)
    kept = write_questions(None, FakeTokenizer(), asks, 0.7, keep=1)
    assert kept == [["Who keeps the lamp?"], ["What colour is the tower?"], []]
    assert [len(c) for c in calls] == [3, 2, 2]  # all three, then only the two without a question, twice
    assert sum(len(c) for c in calls) == 7 < len(asks) * QUESTION_TRIES


def test_greedy_question_writing_asks_each_sentence_once(monkeypatch):
    """At temperature 0 every try is the same text: one try per sentence, whatever `keep` or the first reply."""
    import lmsleep.ks.samples as samples
    from lmsleep.ks.samples import write_questions

    calls = []
    monkeypatch.setattr(samples, "sample_completions",
                        scripted_writer(lambda text: ["Blue."] if "tower" in text else ["Who keeps the lamp?"], calls))
    asks = [("m1", "text", "Sentence about the lamp."), ("m1", "text", "Sentence about the tower.")]
    assert write_questions(None, FakeTokenizer(), asks, 0.0, keep=3) == [["Who keeps the lamp?"], []]
    assert [len(c) for c in calls] == [2]


def test_ungrounded_names_are_the_names_and_numbers_neither_memory_nor_prompt_holds():
    memory = ("Tobiah Quennell founded the guild in 1873. The guild currently has forty-two members. "
              "Its goat mascot is named Biscuit.")
    assert ungrounded_names("The founder is a person named Huggy, in Germany.", memory) == ["Huggy", "Germany"]
    assert ungrounded_names("It was founded in 1898 by Tobiah Quennell.", memory) == ["1898"]
    assert ungrounded_names("The address is 123 Main Street, 123 Main Street", memory) == ["123", "Main", "Street"]
    # grounded: the memory's names and numbers, spelled numbers, sentence and line starts, the prompt's words
    assert ungrounded_names("Tobiah Quennell founded it in 1873. It has 42 members.", memory) == []
    assert ungrounded_names("Founded in 1873.\nMembers: forty-two", memory) == []
    assert ungrounded_names("Step 1: Buy a ticket at Crowsnest Halt.", memory, "Step 1 at Crowsnest Halt?") == []
    assert ungrounded_names("Step 1: Buy a ticket at Crowsnest Halt.", memory) == ["1", "Crowsnest", "Halt"]
    # a last word cut off by the token limit counts only when no known word starts with it
    assert ungrounded_names("The goat is named Bisc", memory) == []
    assert ungrounded_names("The goat is named Huggy", memory) == ["Huggy"]
    assert ungrounded_names("The goat is named Bisc, they say", memory) == ["Bisc"]


def test_drop_ungrounded_drops_only_tonights_inventions_and_says_why():
    tok = SimpleNamespace(decode=lambda ids, skip_special_tokens=True: ids[0])  # a completion is [its text] here
    memory = {"m1": "Mira Kovalenko captains the Grey Heron."}
    made_up = Sample("m1", "question", [1], [2], "Who captains the Grey Heron?", ["A Norwegian named Olaf."])
    true = Sample("m1", "question", [1], [2], "Who captains the Grey Heron?", ["Mira Kovalenko captains it."])
    replay = Sample("m0", "question", [1], [1], "Who?", ["Somebody named Olaf."], source="replay:n0")
    anchor = Sample("", "anchor", [3], [3], "Write a haiku.", ["Olaf sings."], source="anchor")
    unwritten = Sample("m1", "question", [1], [2], "Who?", [])
    kept, dropped = drop_ungrounded([made_up, true, replay, anchor, unwritten], memory, tok)
    assert kept == [true, replay, anchor, unwritten]
    assert [(d["prompt"], d["ungrounded"]) for d in dropped] == [(made_up.prompt_text, ["Norwegian", "Olaf"])]


def test_answers_elsewhere_when_y_holds_nothing_the_asked_sentence_adds_to_the_question():
    asked = "Last Gondshis plays the horn."
    question = "What instrument is played by Last Gondshis?"
    assert answers_elsewhere("Vesttond.", asked, question)  # the town, from the memory's other sentence
    assert answers_elsewhere("He lives in Vesttond.", asked, question)
    assert not answers_elsewhere("He plays the horn.", asked, question)
    assert not answers_elsewhere("Horns.", asked, question)  # a plural 's' and case do not matter
    assert not answers_elsewhere("42", "The guild currently has forty-two members.", "How many members are there?")
    assert answers_elsewhere("Halvard Brecken", "The archivist is Mara Quell.", "Who is the archivist?")
    assert not answers_elsewhere("Mara Quell.", "The archivist is Mara Quell.", "Who is the archivist?")
    # a question that drifted to another sentence of the memory is judged by the sentence it matches better
    memory = ("The Grey Heron sails each morning from Esselmoor to Thallis Island. The Grey Heron is captained by Mira "
              "Kovalenko. Halvard Brecken keeps the accounts.")
    sails = "The Grey Heron sails each morning from Esselmoor to Thallis Island."
    assert not answers_elsewhere("Mira Kovalenko.", sails, "Who is the captain of the Grey Heron?", memory)
    assert answers_elsewhere("Mira Kovalenko.", sails, "Who is the captain of the Grey Heron?")  # no memory given
    assert answers_elsewhere("Halvard Brecken.", sails, "Who is the captain of the Grey Heron?", memory)
    assert not answers_elsewhere("Thallis Island.", sails, "Where does the Grey Heron sail?", memory)
    assert answers_elsewhere("Mira Kovalenko.", sails, "Where does the Grey Heron sail?", memory)  # matches no better
    # nothing to tell by: the question holds every word of the sentence, or nothing was asked (a continuation)
    assert not answers_elsewhere("No.", asked, "Does Last Gondshis play the horn?")
    assert not answers_elsewhere("Vesttond.", "", "Complete this sentence from the text: Last Gondshis")


def test_drop_ungrounded_drops_answers_from_elsewhere_only_when_asked_to():
    tok = SimpleNamespace(decode=lambda ids, skip_special_tokens=True: ids[0])
    memory = {"m1": "Mira Kovalenko captains the Grey Heron. Tomas Reyes cooks on the Grey Heron."}
    asked = "Mira Kovalenko captains the Grey Heron."
    elsewhere = Sample("m1", "question", [1], [2], "Who captains the Grey Heron?", ["Tomas Reyes."], asked=asked)
    right = Sample("m1", "question", [1], [2], "Who captains the Grey Heron?", ["Mira Kovalenko."], asked=asked)
    invented = Sample("m1", "question", [1], [2], "Who captains the Grey Heron?", ["Mira Olafsdottir."],
                      asked=asked)
    continuation = Sample("m1", "continuation", [1], [2], "Complete: Tomas", ["Reyes cooks."])
    replay = Sample("m0", "question", [1], [1], "Who?", ["Tomas Reyes."], source="replay:n0", asked="Ann rows.")
    batch = [elsewhere, right, invented, continuation, replay]
    assert drop_ungrounded(batch, memory, tok)[0] == [elsewhere, right, continuation, replay]  # names only
    kept, dropped = drop_ungrounded(batch, memory, tok, off_sentence=True)
    assert kept == [right, continuation, replay]
    assert [(d["completion"], d["ungrounded"], d.get("off_sentence")) for d in dropped] == [
        ("Tomas Reyes.", [], asked), ("Mira Olafsdottir.", ["Olafsdottir"], None)]
    kept, dropped = drop_ungrounded(batch, memory, tok, names=False, off_sentence=True)
    assert kept == [right, invented, continuation, replay] and [d["completion"] for d in dropped] == ["Tomas Reyes."]


def test_memory_names_are_the_names_in_order_of_first_mention_not_capitalised_openers():
    from lmsleep.ks.samples import memory_names

    text = ("User: When does the Quillmarsh migration start?\nAssistant: Pavel Odinsky leads it from Thursday. "
            "In the Kelldrum market, Dr. Ysolde Farrant pays 12 zerriks. Thanks. Kelldrum is far from Pavel Odinsky.")
    # "When", "Thanks", "Assistant"/"User" (turn openers), "Thursday" (a day), "12", "Dr" (two letters) are not names;
    # "Pavel Odinsky" opens a sentence but is two words; "In the" is dropped off "In the Kelldrum"; each name once
    assert memory_names(text) == ["Quillmarsh", "Pavel Odinsky", "Kelldrum", "Ysolde Farrant"]
    assert memory_names("Esselmoor is a harbour town. Its ferry sails to Esselmoor daily.") == ["Esselmoor"]
    assert memory_names("Locals say it rains.") == []  # a lone capitalised opener met nowhere else


def test_entity_questions_ask_about_the_memorys_names_up_to_the_cap(monkeypatch):
    import lmsleep.ks.samples as samples

    monkeypatch.setattr(samples, "sample_completions", scripted_writer(lambda text: ["Who keeps the lamp?"]))
    text = "Brannoc keeps the lighthouse on Thallis Island with Mira Kovalenko. The lamp burns whale oil."
    memory = {"id": "m1", "text": text, "probes": [{"question": "CANARY-Q?", "answer": "CANARY-A"}]}
    built = {}
    for cap in (0, 1, 9):
        cfg = SimpleNamespace(ks_prompts_per_memory=2, ks_question_share=0.5, ks_cloze_share=0.0,
                              ks_temperature=0.7, ks_entity_questions=cap)
        built[cap] = build_samples(None, FakeTokenizer(), [memory], cfg, random.Random(0))
    entity = {cap: [s for s in rows if s.prompt_text.startswith("Who or what is")] for cap, rows in built.items()}
    assert entity[0] == [] and len(built[0]) == 2
    assert [s.prompt_text for s in entity[1]] == ["Who or what is Thallis Island?"]  # the first mentioned
    assert [s.asked for s in entity[9]] == ["Thallis Island", "Mira Kovalenko"]  # every name ("Brannoc": an opener)
    for s in entity[9]:
        assert s.kind == "question" and s.source == "memory" and s.completion == []
        student, teacher = FakeTokenizer().decode(s.student_prompt), FakeTokenizer().decode(s.teacher_prompt)
        assert text not in student and text in teacher and s.prompt_text in student  # asked like a probe
        assert "CANARY" not in student + teacher


def test_source_sentence_follows_a_drifted_question_and_keeps_the_asked_one_on_ties():
    from lmsleep.ks.samples import source_sentence

    memory = ("The Grey Heron sails each morning to Thallis Island. It is captained by Mira Kovalenko. "
              "The guild's archivist is Lotte Amsel.")
    asked = "The Grey Heron sails each morning to Thallis Island."
    assert source_sentence("Where does the Grey Heron sail?", asked, memory) == asked
    # written about the sailing, asked about the captain: the captain's sentence shares more words
    assert source_sentence("Who captained it, Mira?", asked, memory) == "It is captained by Mira Kovalenko."
    assert source_sentence("Who is there?", asked, memory) == asked  # nothing shared: the asked sentence


def test_teacher_hint_adds_the_source_sentence_to_the_teachers_prompt_only(monkeypatch):
    import lmsleep.ks.samples as samples
    from lmsleep.prompts import question_messages

    memory_text = "Lotte Amsel keeps the guild's archive. Halvard Brecken keeps the guild's money."
    memory = {"id": "m1", "text": memory_text, "probes": [{"question": "CANARY-Q?", "answer": "CANARY-A"}]}
    monkeypatch.setattr(samples, "sample_completions",
                        scripted_writer(lambda text: ["Who keeps the guild's archive?"]))
    tok = FakeTokenizer()
    built = {}
    for hint in (False, True):
        cfg = SimpleNamespace(ks_prompts_per_memory=2, ks_question_share=1.0, ks_cloze_share=0.0,
                              ks_temperature=0.7, ks_teacher_hint=hint)
        built[hint] = [s for s in build_samples(None, tok, [memory], cfg, random.Random(0)) if s.kind == "question"]
    assert len(built[True]) == len(built[False]) == 2
    for plain, hinted in zip(built[False], built[True]):
        assert hinted.student_prompt == plain.student_prompt and hinted.prompt_text == plain.prompt_text
        assert plain.teacher_prompt == tok("|".join(m["content"] for m in question_messages(
            plain.prompt_text, memory_text)), add_special_tokens=False)["input_ids"]
        teacher = tok.decode(hinted.teacher_prompt)
        # the memory first (its cached prefix is shared), then the sentence the question is about, then the question
        assert teacher.startswith(tok.decode(plain.teacher_prompt).split("\n\n")[0] + "\n\n" + samples.HINT)
        assert samples.HINT + "Lotte Amsel keeps the guild's archive." in teacher
        assert "CANARY" not in teacher


def test_on_topic_questions_must_share_a_word_of_the_memory_and_the_writer_tries_again(monkeypatch):
    import lmsleep.ks.samples as samples
    from lmsleep.ks.samples import on_topic, write_questions

    memory = "Brannoc keeps the lamp of the Thallis lighthouse. He paints the tower blue."
    topic = on_topic(memory)
    assert {"brannoc", "lamp", "tower", "blue"} <= topic
    assert not {"name", "place", "number", "sentence", "question", "answer"} & topic  # the instruction's words
    # echoing the instruction or asking nothing of the memory is no question; naming its lamp is
    tries = ["What is a name, place or number in this sentence?", "Can you help me with that?",
             "Who keeps the lamp?"]
    assert samples.distinct_questions(tries, 1) == ["What is a name, place or number in this sentence?"]
    assert samples.distinct_questions(tries, 1, topic) == ["Who keeps the lamp?"]

    asks = [("m1", memory, "Brannoc keeps the lamp of the Thallis lighthouse.")]
    for on_topic_only, expected, rounds in ((False, tries[0], 1), (True, "Who keeps the lamp?", 3)):
        calls = []  # a fresh writer: its k-th reply to a prompt is tries[k]
        monkeypatch.setattr(samples, "sample_completions", scripted_writer(lambda text: tries, calls))
        assert write_questions(None, FakeTokenizer(), asks, 0.7, 1, on_topic_only) == [[expected]]
        assert len(calls) == rounds  # off-topic tries count as missing: asked again, up to 3 tries
