"""The front end: the declaration language a user writes recurrences in (``declare``), its
lowering to the step IR with every declaration check (``step``), and ``Recurrence``, the
user's model (``recurrence``)."""
