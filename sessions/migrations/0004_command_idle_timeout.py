from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('vterm_sessions', '0003_sandbox'),
    ]

    operations = [
        migrations.AddField(
            model_name='command',
            name='idle_timeout',
            field=models.FloatField(blank=True, null=True),
        ),
    ]
