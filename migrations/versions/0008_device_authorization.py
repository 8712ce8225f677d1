"""terminal sign-in: device authorizations, user access tokens in api_keys

Revision ID: 0008
Revises: 0001

"""
from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('device_authorizations',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('device_code_digest', sa.LargeBinary(length=32), nullable=False),
    sa.Column('user_code_digest', sa.LargeBinary(length=32), nullable=False),
    sa.Column('client_id', sa.String(length=64), nullable=False),
    sa.Column('scopes', sa.Text(), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.Column('expires_at', sa.BigInteger(), nullable=False),
    sa.Column('interval', sa.Integer(), nullable=False),
    sa.Column('last_polled_at', sa.BigInteger(), nullable=True),
    sa.Column('request_ip', sa.String(length=64), nullable=True),
    sa.Column('request_user_agent', sa.String(length=300), nullable=True),
    sa.Column('user_id', sa.Integer(), nullable=True),
    sa.Column('decided_at', sa.BigInteger(), nullable=True),
    sa.Column('api_key_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['api_key_id'], ['api_keys.id'], name=op.f('fk_device_authorizations_api_key_id_api_keys')),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_device_authorizations_user_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_device_authorizations')),
    sa.UniqueConstraint('device_code_digest', name=op.f('uq_device_authorizations_device_code_digest')),
    sa.UniqueConstraint('user_code_digest', name=op.f('uq_device_authorizations_user_code_digest'))
    )
    with op.batch_alter_table('device_authorizations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_device_authorizations_api_key_id'), ['api_key_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_device_authorizations_user_id'), ['user_id'], unique=False)

    # "user_token" does not fit the old VARCHAR(8).
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.alter_column('kind', existing_type=sa.String(length=8), type_=sa.String(length=16), existing_nullable=False)


def downgrade():
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.alter_column('kind', existing_type=sa.String(length=16), type_=sa.String(length=8), existing_nullable=False)
    with op.batch_alter_table('device_authorizations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_device_authorizations_user_id'))
        batch_op.drop_index(batch_op.f('ix_device_authorizations_api_key_id'))
    op.drop_table('device_authorizations')
